package cache

import (
	"net/http"
	"net/url"
	"strings"
)

// Cache keys are scheme://host + path [+ "?" + query], canonicalised by
// canonicalKey. Every key the cache builds goes through it: the key of a
// request, the targets an unsafe method invalidates, and the URLs given to
// PurgeURL; PurgePrefix canonicalises its prefix with the same helpers.

// cacheKey is the key of the request's target URI: "https" when it came over
// TLS, its Host and its request URI.
func cacheKey(r *http.Request) string {
	return canonicalKey(scheme(r), r.Host, r.URL)
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// keyFromURL builds the key of an absolute URL ("https://example.com/a?b").
// Raw non-ASCII characters are percent-encoded as UTF-8.
func keyFromURL(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", false
	}
	return canonicalKey(u.Scheme, u.Host, u), true
}

// canonicalKey is the one function that builds a key: scheme and host
// lower-cased, the scheme's default port (":80" for http, ":443" for https)
// and a trailing dot on the host dropped, and in the path and query of u
// (its own scheme and host are ignored) percent-encodings upper-cased,
// percent-encoded unreserved characters (A-Z a-z 0-9 - . _ ~) decoded and
// raw control, space and non-ASCII bytes percent-encoded. An already
// canonical key costs one allocation.
func canonicalKey(scheme, host string, u *url.URL) string {
	scheme = strings.ToLower(scheme)
	host = canonicalHost(scheme, host)
	path, query, hasQuery := u.Opaque, u.RawQuery, u.ForceQuery || u.RawQuery != ""
	if path == "" {
		if path = u.EscapedPath(); path == "" {
			path = "/"
		}
	} else if strings.HasPrefix(path, "//") {
		path = u.Scheme + ":" + path // as URL.RequestURI does
	}
	if uriCanonical(path) && uriCanonical(query) {
		if !hasQuery {
			return scheme + "://" + host + path
		}
		return scheme + "://" + host + path + "?" + query
	}
	b := make([]byte, 0, len(scheme)+3+len(host)+len(path)+1+len(query)+16)
	b = append(b, scheme...)
	b = append(b, "://"...)
	b = append(b, host...)
	b = appendCanonicalURI(b, path)
	if hasQuery {
		b = append(b, '?')
		b = appendCanonicalURI(b, query)
	}
	return string(b)
}

// canonicalHost lower-cases host and drops a trailing dot and the default
// port of scheme (which must be lower-case). It does not allocate when host
// is already canonical.
func canonicalHost(scheme, host string) string {
	host = strings.ToLower(host)
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i:], ']') < 0 {
		name, port = host[:i], host[i+1:]
		if strings.IndexByte(name, ':') >= 0 && !strings.HasPrefix(name, "[") {
			return host // a bare IPv6 address: leave it alone
		}
	}
	dropPort := port == "" || (scheme == "http" && port == "80") || (scheme == "https" && port == "443")
	dot := len(name) > 1 && name[len(name)-1] == '.'
	if !dot && (!dropPort || len(name) == len(host)) {
		return host
	}
	if dot {
		name = name[:len(name)-1]
	}
	if dropPort {
		return name
	}
	return name + ":" + port
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// mustEncode reports the raw bytes a canonical path or query percent-encodes.
func mustEncode(c byte) bool { return c <= ' ' || c >= 0x7f }

// uriCanonical reports whether appendCanonicalURI would leave s unchanged.
func uriCanonical(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case mustEncode(c):
			return false
		case c != '%':
		case i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			if 'a' <= s[i+1] || 'a' <= s[i+2] || isUnreserved(unhex(s[i+1])<<4|unhex(s[i+2])) {
				return false
			}
			i += 2
		case i+2 == len(s) && 'a' <= s[i+1] && isHex(s[i+1]):
			return false
		}
	}
	return true
}

// appendCanonicalURI appends the path or query s to b in canonical form (see
// canonicalKey). A malformed escape ("%zz") is kept as it is; an escape cut
// short at the end of s (a prefix "…%c") has its hex digit upper-cased.
func appendCanonicalURI(b []byte, s string) []byte {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case mustEncode(c):
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			d := unhex(s[i+1])<<4 | unhex(s[i+2])
			if isUnreserved(d) {
				b = append(b, d)
			} else {
				b = append(b, '%', hexDigits[d>>4], hexDigits[d&15])
			}
			i += 2
		case c == '%' && i+2 == len(s) && isHex(s[i+1]):
			b = append(b, '%', hexDigits[unhex(s[i+1])])
			i++
		default:
			b = append(b, c)
		}
	}
	return b
}

// normalisePrefix canonicalises a PurgePrefix argument like canonicalKey
// does a key. A prefix without "://" is used as given. The host is
// canonicalised in full (default port, trailing dot) only when the prefix
// goes on past it; a prefix that ends inside the authority is lower-cased.
func normalisePrefix(p string) string {
	i := strings.Index(p, "://")
	if i < 0 {
		return p
	}
	sch := strings.ToLower(p[:i])
	rest := p[i+3:]
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		return sch + "://" + strings.ToLower(rest)
	}
	return string(appendCanonicalURI([]byte(sch+"://"+canonicalHost(sch, rest[:end])), rest[end:]))
}
