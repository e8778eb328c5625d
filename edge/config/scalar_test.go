package config

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour
	tests := []struct {
		in   string
		want time.Duration
		err  string // substring of the error; "" for success
	}{
		{"0", 0, ""},
		{"0s", 0, ""},
		{"90s", 90 * time.Second, ""},
		{"5m", 5 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"365d", 365 * day, ""},
		{"1d12h", 36 * time.Hour, ""},
		{"1.5d", 36 * time.Hour, ""},
		{"2d3h4m5s", 2*day + 3*time.Hour + 4*time.Minute + 5*time.Second, ""},
		{"250ms", 250 * time.Millisecond, ""},
		{"10us", 10 * time.Microsecond, ""},
		{"10µs", 10 * time.Microsecond, ""},
		{"7ns", 7, ""},
		{" 5s ", 5 * time.Second, ""},
		{"106751d", 106751 * day, ""},
		{"", 0, `bad duration "": want a number and a unit`},
		{"30", 0, `bad duration "30": missing unit (for example "30s")`},
		{"1.5", 0, "missing unit"},
		{"-5s", 0, `bad duration "-5s": must not be negative`},
		{"-0", 0, "must not be negative"},
		{"+5s", 0, "want a number and a unit"},
		{"5x", 0, `unknown unit "x"`},
		{"5 s", 0, `unknown unit " s"`},
		{"1d2", 0, `missing unit after "2"`},
		{"d", 0, "want a number and a unit"},
		{"1..5s", 0, "want a number and a unit"},
		{".s", 0, "want a number and a unit"},
		{"abc", 0, "want a number and a unit"},
		{"106752d", 0, "too large"},
		{"9999999999999999999s", 0, "too large"},
		{"106751d23h59m59s1s", 0, "too large"},
		{"100000000000000000000000d", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("parseDuration(%q): %v", tt.in, err)
		case tt.err == "" && got.D() != tt.want:
			t.Errorf("parseDuration(%q) = %v, want %v", tt.in, got.D(), tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseDuration(%q) = %v, %v; want error containing %q", tt.in, got.D(), err, tt.err)
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"0", 0, ""},
		{"512", 512, ""},
		{"100B", 100, ""},
		{"512KB", 512_000, ""},
		{"2MB", 2_000_000, ""},
		{"3GB", 3_000_000_000, ""},
		{"1TB", 1e12, ""},
		{"64KiB", 64 << 10, ""},
		{"256MiB", 256 << 20, ""},
		{"1 GiB", 1 << 30, ""},
		{"2TiB", 2 << 40, ""},
		{"256mib", 256 << 20, ""},
		{"9223372036854775807", math.MaxInt64, ""},
		{"8388607TiB", 8388607 << 40, ""},
		{"", 0, `bad size "": want a whole number`},
		{"MiB", 0, "want a whole number"},
		{"1.5MiB", 0, "want a whole number"},
		{"1  MiB", 0, "want a whole number"},
		{"12 parsecs", 0, "want a whole number"},
		{"0x10", 0, "want a whole number"},
		{"-1", 0, `bad size "-1": must not be negative`},
		{"-1KiB", 0, "must not be negative"},
		{"9223372036854775808", 0, "too large"},
		{"8388608TiB", 0, "too large"},
		{"9999999999999999999999GB", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("parseSize(%q): %v", tt.in, err)
		case tt.err == "" && int64(got) != tt.want:
			t.Errorf("parseSize(%q) = %d, want %d", tt.in, got, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.err)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.168.1.7", "192.168.1.7/32"},
		{"::1", "::1/128"},
		{"2001:db8::1/32", "2001:db8::/32"},
		{"10.0.0.0/33", ""},
		{"fe80::1%eth0", ""},
		{"nope", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := parsePrefix(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("parsePrefix(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != netip.MustParsePrefix(tt.want) {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestParseBackendURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, err string }{
		{"http://127.0.0.1:3000", ""},
		{"https://api.internal", ""},
		{"h2c://[::1]:8080/", ""},
		{"", `bad backend URL "": empty`},
		{"127.0.0.1:3000", "missing scheme"},
		{"ftp://host", "scheme must be http, https or h2c"},
		{"http://", "missing host"},
		{"http://:80", "missing host"},
		{"http://user:pw@host", "user info is not allowed"},
		{"http://host/api", "a path is not allowed"},
		{"http://host?x=1", "a query is not allowed"},
		{"http://host/?", "a query is not allowed"},
		{"http://host#frag", "a fragment is not allowed"},
		{"http://host:0", "port must be 1..65535"},
		{"http://host:70000", "port must be 1..65535"},
		{"http://host:abc", `bad backend URL "http://host:abc": invalid port`},
		{"http://a b", "bad backend URL"},
	}
	for _, tt := range tests {
		u, err := parseBackendURL(tt.in)
		switch {
		case tt.err == "" && (err != nil || u.String() != tt.in):
			t.Errorf("parseBackendURL(%q) = %v, %v", tt.in, u, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseBackendURL(%q) error = %v, want %q", tt.in, err, tt.err)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want, err string }{
		{"Example.COM", "example.com", ""},
		{"example.com:8080", "example.com", ""},
		{"example.com.", "example.com", ""},
		{"*.Example.com", "*.example.com", ""},
		{"*", "*", ""},
		{"localhost", "localhost", ""},
		{"127.0.0.1:80", "127.0.0.1", ""},
		{"[::1]:8080", "::1", ""},
		{"[::1]", "::1", ""},
		{"::1", "::1", ""},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"a.*.com", "", "wildcard"},
		{"*foo.com", "", "wildcard"},
		{"*.*.com", "", "wildcard"},
		{"foo.*", "", "wildcard"},
		{"-a.com", "", "start or end"},
		{"a..com", "", "label"},
		{"bücher.de", "", "letters, digits"},
		{"a.com:0", "", "bad port"},
		{"a.com:x", "", "bad port"},
		{"[::1", "", `missing "]"`},
		{"[1.2.3.4]", "", "IPv6"},
		{"fe80::1%eth0", "", "IPv6"},
		{strings.Repeat("a", 64) + ".com", "", "label"},
	}
	for _, tt := range tests {
		got, msg := normalizeHost(tt.in)
		if got != tt.want || !strings.Contains(msg, tt.err) || (tt.err == "") != (msg == "") {
			t.Errorf("normalizeHost(%q) = %q, %q; want %q, %q", tt.in, got, msg, tt.want, tt.err)
		}
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"0", "90s", "365d", "1d12h", "1.5d", "-5s", "30", "1..5s", "µs", "106752d", "9e9s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDuration(s)
		if err == nil && d < 0 {
			t.Errorf("parseDuration(%q) = %d, negative", s, d)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512", "256MiB", "1 GiB", "-1", "9223372036854775808", "8388608TiB", "1.5KB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err == nil && n < 0 {
			t.Errorf("parseSize(%q) = %d, negative", s, n)
		}
	})
}

func TestBackendURLErrorHidesPassword(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://bob:s3cretpw@127.0.0.1:3000": "user info is not allowed",
		"http://bob:s3cretpw@host:bad":       "invalid port",
		"ftp://bob:s3cretpw@host":            "scheme must be",
	} {
		_, err := parseBackendURL(in)
		if err == nil || strings.Contains(err.Error(), "s3cretpw") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v: want %q without the password", in, err, want)
		}
	}
	if got := hideUserinfo("http://a:b@c/d@e"); got != "http://xxxxx@c/d@e" {
		t.Errorf("hideUserinfo = %q", got)
	}
}

func TestParseUntrustedDoesNotExpand(t *testing.T) {
	t.Setenv("GH_SECRET_FOR_TEST", "sup3rs3cret")
	doc := "sites: [{hosts: [a.example], tls: {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}, routes: [{redirect: {to: \"${GH_SECRET_FOR_TEST}\"}}]}]\n"
	_, err := ParseUntrusted("p.yaml", []byte(doc))
	if err == nil || strings.Contains(err.Error(), "sup3rs3cret") || !strings.Contains(err.Error(), "${GH_SECRET_FOR_TEST}") {
		t.Errorf("err = %v: want the literal ${VAR} and no secret", err)
	}
	if strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("untrusted parse looked at files: %v", err)
	}
}
