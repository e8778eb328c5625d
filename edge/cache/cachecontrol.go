package cache

import (
	"net/http"
	"strings"
)

// ccFlag is a set of Cache-Control directives (RFC 9111 §5.2, RFC 5861).
type ccFlag uint32

const (
	ccNoCache ccFlag = 1 << iota
	ccNoStore
	ccPrivate
	ccPublic
	ccMustRevalidate
	ccProxyRevalidate
	ccMustUnderstand
	ccOnlyIfCached
	ccMaxAge
	ccSMaxAge
	ccMaxStale
	ccMaxStaleAny // max-stale without a value: any staleness is acceptable
	ccMinFresh
	ccStaleWhileRevalidate
	ccStaleIfError
	// ccInvalidFreshness marks a max-age or s-maxage whose argument is not
	// delta-seconds; RFC 9111 §4.2.1 encourages treating such a response as stale.
	ccInvalidFreshness
)

// maxDeltaSeconds is the value a delta-seconds argument that overflows is
// clamped to (RFC 9111 §1.2.2).
const maxDeltaSeconds = 1 << 31

// directives holds parsed Cache-Control directives of a request or a response.
// The zero value means "no directives". Numeric fields are seconds and are only
// meaningful when the matching flag is set. It is a plain value: parsing never
// allocates.
type directives struct {
	flags                ccFlag
	maxAge               int64
	sMaxAge              int64
	maxStale             int64
	minFresh             int64
	staleWhileRevalidate int64
	staleIfError         int64
}

func (d *directives) has(f ccFlag) bool { return d.flags&f != 0 }

// parseDirectives parses every Cache-Control field line in values (they form
// one comma-separated list, RFC 9110 §5.3). Directive names are matched
// case-insensitively; arguments may be tokens or quoted strings (RFC 9111
// §5.2 asks recipients to accept both forms); when a directive appears more
// than once the first occurrence wins (RFC 9111 §4.2.1).
func parseDirectives(values []string) directives {
	var d directives
	for _, v := range values {
		parseDirectiveList(v, &d)
	}
	return d
}

func isOWS(b byte) bool { return b == ' ' || b == '\t' }

func parseDirectiveList(s string, d *directives) {
	i := 0
	for i < len(s) {
		for i < len(s) && (isOWS(s[i]) || s[i] == ',') {
			i++
		}
		if i >= len(s) {
			return
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ',' && !isOWS(s[i]) {
			i++
		}
		name := s[start:i]
		j := i
		for j < len(s) && isOWS(s[j]) {
			j++
		}
		var arg string
		hasArg := false
		if j < len(s) && s[j] == '=' {
			hasArg = true
			i = j + 1
			for i < len(s) && isOWS(s[i]) {
				i++
			}
			if i < len(s) && s[i] == '"' {
				i++
				as := i
				for i < len(s) && s[i] != '"' {
					if s[i] == '\\' && i+1 < len(s) {
						i++
					}
					i++
				}
				arg = s[as:i]
				if i < len(s) {
					i++ // closing quote
				}
			} else {
				as := i
				for i < len(s) && s[i] != ',' && !isOWS(s[i]) {
					i++
				}
				arg = s[as:i]
			}
		}
		// Anything after the directive up to the next comma is junk; skip it.
		for i < len(s) && s[i] != ',' {
			i++
		}
		d.apply(name, arg, hasArg)
	}
}

// apply records one directive. Unknown directives are ignored (RFC 9111 §5.2.3).
func (d *directives) apply(name, arg string, hasArg bool) {
	switch {
	case strings.EqualFold(name, "max-age"):
		d.setFreshness(ccMaxAge, &d.maxAge, arg, hasArg)
	case strings.EqualFold(name, "s-maxage"):
		d.setFreshness(ccSMaxAge, &d.sMaxAge, arg, hasArg)
	case strings.EqualFold(name, "no-cache"):
		// The qualified form (no-cache="Set-Cookie") is treated as the
		// unqualified one: stricter, and allowed by RFC 9111 §5.2.2.4.
		d.flags |= ccNoCache
	case strings.EqualFold(name, "no-store"):
		d.flags |= ccNoStore
	case strings.EqualFold(name, "private"):
		// Qualified private="X" is treated as unqualified: not stored at all.
		d.flags |= ccPrivate
	case strings.EqualFold(name, "public"):
		d.flags |= ccPublic
	case strings.EqualFold(name, "must-revalidate"):
		d.flags |= ccMustRevalidate
	case strings.EqualFold(name, "proxy-revalidate"):
		d.flags |= ccProxyRevalidate
	case strings.EqualFold(name, "must-understand"):
		d.flags |= ccMustUnderstand
	case strings.EqualFold(name, "only-if-cached"):
		d.flags |= ccOnlyIfCached
	case strings.EqualFold(name, "max-stale"):
		if d.has(ccMaxStale) {
			return
		}
		if !hasArg {
			d.flags |= ccMaxStale | ccMaxStaleAny
			return
		}
		if n, ok := parseDeltaSeconds(arg); ok {
			d.flags |= ccMaxStale
			d.maxStale = n
		}
	case strings.EqualFold(name, "min-fresh"):
		d.setOptional(ccMinFresh, &d.minFresh, arg, hasArg)
	case strings.EqualFold(name, "stale-while-revalidate"):
		d.setOptional(ccStaleWhileRevalidate, &d.staleWhileRevalidate, arg, hasArg)
	case strings.EqualFold(name, "stale-if-error"):
		d.setOptional(ccStaleIfError, &d.staleIfError, arg, hasArg)
	}
}

// setFreshness records max-age or s-maxage. An invalid argument makes the
// response stale rather than being ignored.
func (d *directives) setFreshness(f ccFlag, dst *int64, arg string, hasArg bool) {
	if d.has(f) {
		return
	}
	d.flags |= f
	n, ok := parseDeltaSeconds(arg)
	if !hasArg || !ok {
		d.flags |= ccInvalidFreshness
		n = 0
	}
	*dst = n
}

// setOptional records a directive whose invalid argument makes it be ignored.
func (d *directives) setOptional(f ccFlag, dst *int64, arg string, hasArg bool) {
	if d.has(f) || !hasArg {
		return
	}
	if n, ok := parseDeltaSeconds(arg); ok {
		d.flags |= f
		*dst = n
	}
}

// parseDeltaSeconds parses 1*DIGIT, clamping overflow to 2^31 (RFC 9111 §1.2.2).
func parseDeltaSeconds(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxDeltaSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	if n > maxDeltaSeconds {
		n = maxDeltaSeconds
	}
	return n, true
}

// requestInfo is what the cache needs to know about a GET or HEAD request.
type requestInfo struct {
	cc              directives
	noCache         bool // Cache-Control: no-cache, or Pragma: no-cache without Cache-Control
	hasRange        bool
	hasConditional  bool // If-None-Match or If-Modified-Since
	hasPrecondition bool // If-Match or If-Unmodified-Since: passed through untouched
}

func parseRequest(r *http.Request) requestInfo {
	var ri requestInfo
	h := r.Header
	if v, ok := h["Cache-Control"]; ok {
		ri.cc = parseDirectives(v)
		ri.noCache = ri.cc.has(ccNoCache)
	} else if p, ok := h["Pragma"]; ok {
		// RFC 9111 §5.4: Pragma: no-cache counts only without Cache-Control.
		for _, v := range p {
			if containsToken(v, "no-cache") {
				ri.noCache = true
			}
		}
	}
	_, ri.hasRange = h["Range"]
	_, inm := h["If-None-Match"]
	_, ims := h["If-Modified-Since"]
	ri.hasConditional = inm || ims
	_, im := h["If-Match"]
	_, ius := h["If-Unmodified-Since"]
	ri.hasPrecondition = im || ius
	return ri
}

// containsToken reports whether the comma-separated list s holds tok
// (case-insensitive).
func containsToken(s, tok string) bool {
	for s != "" {
		var el string
		if i := strings.IndexByte(s, ','); i >= 0 {
			el, s = s[:i], s[i+1:]
		} else {
			el, s = s, ""
		}
		if strings.EqualFold(trimOWS(el), tok) {
			return true
		}
	}
	return false
}

func trimOWS(s string) string {
	for s != "" && isOWS(s[0]) {
		s = s[1:]
	}
	for s != "" && isOWS(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}
