package router

import (
	"bytes"
	"strings"
)

// maxHostLen bounds the hosts that are lower-cased on the stack; a DNS name
// is at most 253 bytes, so a longer host can only reach the "*" site.
const maxHostLen = 256

// normHost normalises a configured host the same way siteFor normalises a
// request's host. It may allocate; it runs at compile time only.
func normHost(h string) string {
	return strings.ToLower(trimHost(h))
}

// trimHost removes a port, IPv6 brackets and one trailing dot from a Host
// header value: "Example.COM.:443" → "Example.COM", "[::1]:8080" → "::1".
func trimHost(h string) string {
	if h == "" {
		return h
	}
	if h[0] == '[' {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[1:i]
		}
		return h
	}
	if i := strings.IndexByte(h, ':'); i >= 0 {
		if strings.IndexByte(h[i+1:], ':') >= 0 {
			return h // a bare IPv6 address, no port
		}
		h = h[:i]
	}
	if n := len(h); n > 1 && h[n-1] == '.' {
		h = h[:n-1]
	}
	return h
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

// siteFor returns the site serving host, or nil. It does not allocate: an
// already lower-case host is looked up as is, any other is lower-cased into
// a stack buffer.
func (t *Table) siteFor(host string) *site {
	host = trimHost(host)
	if !hasUpper(host) {
		return t.siteLower(host)
	}
	if len(host) > maxHostLen {
		return t.fallback
	}
	var buf [maxHostLen]byte
	b := buf[:copy(buf[:], host)]
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return t.siteLowerBytes(b)
}

// siteLower looks up a trimmed, lower-case host.
func (t *Table) siteLower(h string) *site {
	if h == "" {
		return t.fallback
	}
	if s := t.exact[h]; s != nil {
		return s
	}
	if i := strings.IndexByte(h, '.'); i > 0 {
		if s := t.wildcard[h[i+1:]]; s != nil {
			return s
		}
	}
	return t.fallback
}

// siteLowerBytes is siteLower for a byte slice; the string(b) conversions in
// map indexes do not allocate.
func (t *Table) siteLowerBytes(h []byte) *site {
	if len(h) == 0 {
		return t.fallback
	}
	if s := t.exact[string(h)]; s != nil {
		return s
	}
	if i := bytes.IndexByte(h, '.'); i > 0 {
		if s := t.wildcard[string(h[i+1:])]; s != nil {
			return s
		}
	}
	return t.fallback
}
