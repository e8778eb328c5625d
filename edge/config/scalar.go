package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// expand replaces every ${NAME} in s with the value of the environment
// variable NAME (looked up with lookup); "$${" is a literal "${". It returns
// the expanded text and one message per problem (unset variable, bad name,
// missing "}").
func expand(s string, lookup func(string) (string, bool)) (string, []string) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var (
		b    strings.Builder
		errs []string
	)
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				errs = append(errs, `unterminated "${" (write "$${" for a literal "${")`)
				return s, errs
			}
			name := s[i+2 : i+2+end]
			i += 2 + end + 1
			if !validEnvName(name) {
				errs = append(errs, fmt.Sprintf("bad environment variable name %q", name))
				continue
			}
			v, ok := lookup(name)
			if !ok {
				errs = append(errs, fmt.Sprintf("environment variable %q is not set", name))
				continue
			}
			b.WriteString(v)
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), errs
}

// validEnvName reports whether name looks like [A-Za-z_][A-Za-z0-9_]*.
func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// durationUnits are the units parseDuration accepts besides "d".
var durationUnits = map[string]bool{"ns": true, "us": true, "µs": true, "μs": true, "ms": true, "s": true, "m": true, "h": true}

// parseDuration parses a Go duration extended with a "d" (24h) unit:
// "90s", "5m", "365d", "1d12h", "1.5d". "0" is the only unit-less value;
// negative durations are rejected.
func parseDuration(s string) (Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	bad := func(why string) error { return fmt.Errorf("bad duration %q: %s", orig, why) }
	if s == "" {
		return 0, bad(`want a number and a unit such as "90s", "5m" or "365d"`)
	}
	if s == "0" {
		return 0, nil
	}
	if s[0] == '-' {
		return 0, bad("must not be negative")
	}
	if isNumber(s) {
		return 0, bad(fmt.Sprintf("missing unit (for example %q)", s+"s"))
	}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && (isDigit(s[i]) || s[i] == '.') {
			i++
		}
		num := s[:i]
		s = s[i:]
		j := 0
		for j < len(s) && !isDigit(s[j]) && s[j] != '.' {
			j++
		}
		unit := s[:j]
		s = s[j:]
		if num == "" || !isNumber(num) {
			return 0, bad(`want a number and a unit such as "90s", "5m" or "365d"`)
		}
		if unit == "" {
			return 0, bad(fmt.Sprintf("missing unit after %q", num))
		}
		var seg time.Duration
		switch {
		case unit == "d":
			h, err := time.ParseDuration(num + "h")
			if err != nil || h > math.MaxInt64/24 {
				return 0, bad("too large")
			}
			seg = h * 24
		case durationUnits[unit]:
			d, err := time.ParseDuration(num + unit)
			if err != nil {
				return 0, bad("too large")
			}
			seg = d
		default:
			return 0, bad(fmt.Sprintf("unknown unit %q (use ns, us, ms, s, m, h or d)", unit))
		}
		if seg > math.MaxInt64-total {
			return 0, bad("too large")
		}
		total += seg
	}
	return Duration(total), nil
}

// isNumber reports whether s is digits with at most one '.' and at least one
// digit.
func isNumber(s string) bool {
	digits, dots := 0, 0
	for i := 0; i < len(s); i++ {
		switch {
		case isDigit(s[i]):
			digits++
		case s[i] == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// sizeUnits maps a lower-cased unit to its multiplier.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// parseSize parses a byte count: a whole number with an optional unit (B,
// KB, MB, GB, TB powers of 1000; KiB, MiB, GiB, TiB powers of 1024; any
// case), optionally separated by one space: "512", "256MiB", "1 GiB".
func parseSize(s string) (Size, error) {
	orig := s
	s = strings.TrimSpace(s)
	bad := func(why string) error { return fmt.Errorf("bad size %q: %s", orig, why) }
	if strings.HasPrefix(s, "-") {
		return 0, bad("must not be negative")
	}
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	unit := strings.ToLower(strings.TrimPrefix(s[i:], " "))
	mult, ok := sizeUnits[unit]
	if i == 0 || !ok {
		return 0, bad("want a whole number of bytes with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, bad("too large")
	}
	return Size(n * mult), nil
}

// parsePrefix parses a CIDR ("10.0.0.0/8") or a single IP address (a /32 or
// /128) and returns it masked.
func parsePrefix(s string) (Prefix, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("bad IP prefix %q: want a CIDR such as 10.0.0.0/8 or a single IP address", s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Prefix{}, bad
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return Prefix{}, bad
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseBackendURL parses a backend address: scheme http, https or h2c, a
// host, an optional port, and nothing else (no path, query, fragment or
// user info). The default port is not added.
func parseBackendURL(s string) (*url.URL, error) {
	// Messages quote the value without any password it carries.
	bad := func(why string) error { return fmt.Errorf("bad backend URL %q: %s", hideUserinfo(s), why) }
	if s == "" {
		return nil, bad("empty")
	}
	if !strings.Contains(s, "://") {
		return nil, bad(fmt.Sprintf("missing scheme (for example %q)", "http://"+s))
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, bad(err.Error())
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c":
		return nil, bad("scheme must be http, https or h2c")
	case u.Opaque != "" || u.Hostname() == "":
		return nil, bad("missing host")
	case u.User != nil:
		return nil, bad("user info is not allowed")
	case u.Path != "" && u.Path != "/":
		return nil, bad("a path is not allowed (use the route's path and strip_prefix)")
	case u.RawQuery != "" || u.ForceQuery:
		return nil, bad("a query is not allowed")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return nil, bad("a fragment is not allowed")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, bad("port must be 1..65535")
		}
	}
	return u, nil
}

// parseBool accepts the YAML 1.2 core spellings of true and false.
func parseBool(s string) (bool, bool) {
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	return false, false
}

// parseStatusRange parses an HTTP status code ("200"), an inclusive range
// ("200-399") or a class ("2xx"), all within 100..599.
func parseStatusRange(s string) (StatusRange, error) {
	orig := s
	s = strings.ToLower(strings.TrimSpace(s))
	bad := fmt.Errorf("bad status %q: want a code such as 200, a range such as 200-399 or a class such as 2xx", orig)
	code := func(t string) (int, bool) {
		t = strings.TrimSpace(t)
		if len(t) != 3 || !isNumber(t) {
			return 0, false
		}
		n, _ := strconv.Atoi(t)
		return n, n >= 100 && n <= 599
	}
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		base := int(s[0]-'0') * 100
		return StatusRange{base, base + 99}, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, ok := code(lo)
	if !ok {
		return StatusRange{}, bad
	}
	if !isRange {
		return StatusRange{a, a}, nil
	}
	b, ok := code(hi)
	if !ok || b < a {
		return StatusRange{}, bad
	}
	return StatusRange{a, b}, nil
}

// hideUserinfo replaces the user info of a URL-like string ("scheme://
// user:pass@host...") with "xxxxx", without parsing it (it may not parse).
func hideUserinfo(s string) string {
	_, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndexByte(rest[:end], '@')
	if at < 0 {
		return s
	}
	return s[:len(s)-len(rest)] + "xxxxx" + rest[at:]
}
