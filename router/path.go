package router

import (
	"bytes"
	"net/http"
	"strings"
)

// hasSegmentPrefix reports whether path equals base or continues it with a
// "/": base "/api" matches "/api", "/api/" and "/api/x" but not "/apix". The
// empty base (route "/") matches every path that starts with "/", and "".
func hasSegmentPrefix(path, base string) bool {
	return len(path) >= len(base) && path[:len(base)] == base &&
		(len(path) == len(base) || path[len(base)] == '/')
}

// requestPath returns the cleaned path that r is routed on, or false when the
// path is unacceptable (400): not starting with "/", containing a NUL byte,
// or climbing above "/". "OPTIONS *" and an empty path (absolute-form
// request target) are routed as "/"; CONNECT without a path is a 400.
func requestPath(r *http.Request) (string, bool) {
	if r.URL == nil {
		return "", false
	}
	p := r.URL.Path
	if p == "*" && r.Method == http.MethodOptions {
		return "/", true
	}
	if p == "" && r.Method != http.MethodConnect {
		return "/", true // absolute-form "GET http://host HTTP/1.1": an empty path is "/" (RFC 9112 §3.2.2)
	}
	if p == "" || p[0] != '/' || strings.IndexByte(p, 0) >= 0 {
		return "", false
	}
	return cleanPath(p)
}

// isClean reports whether p, which starts with "/", has no empty ("//"), "."
// or ".." segments. A single trailing "/" is allowed.
func isClean(p string) bool {
	for i := 0; i < len(p); {
		j := i + 1
		for j < len(p) && p[j] != '/' {
			j++
		}
		switch p[i+1 : j] {
		case "":
			if j < len(p) {
				return false
			}
		case ".", "..":
			return false
		}
		i = j
	}
	return true
}

// cleanPath collapses repeated slashes and resolves "." and ".." segments in
// p, which starts with "/". The result keeps a trailing "/" when p had one or
// ended in a "." or ".." segment (as RFC 3986 dot-segment removal does). It
// returns false when ".." would climb above "/". A clean p is returned as is,
// without allocating.
func cleanPath(p string) (string, bool) {
	if isClean(p) {
		return p, true
	}
	buf := make([]byte, 0, len(p))
	trailing := false
	for i := 0; i < len(p); {
		j := i + 1
		for j < len(p) && p[j] != '/' {
			j++
		}
		seg := p[i+1 : j]
		trailing = j == len(p) && (seg == "" || seg == "." || seg == "..")
		switch seg {
		case "", ".":
		case "..":
			if len(buf) == 0 {
				return "", false
			}
			buf = buf[:bytes.LastIndexByte(buf, '/')]
		default:
			buf = append(buf, '/')
			buf = append(buf, seg...)
		}
		i = j
	}
	if len(buf) == 0 || trailing {
		buf = append(buf, '/')
	}
	return string(buf), true
}

// ensureSlash returns p, or "/" when p is empty.
func ensureSlash(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// stripPrefix returns a shallow copy of r whose URL has the route's prefix
// (without its trailing "/") removed from Path and, when the escaped path
// starts with the prefix in the same form, from RawPath; otherwise RawPath is
// cleared so that EscapedPath re-derives it from Path. The query is kept and
// RequestURI is recomputed. r is returned unchanged when its path does not
// have the prefix (the route was not matched by Lookup).
//
// When r's path needed cleaning, the cleaned path (the one it was routed on)
// is what gets stripped and forwarded, so that a backend never sees dot
// segments outside the prefix it owns.
func (rt *Route) stripPrefix(r *http.Request) *http.Request {
	if r.URL == nil {
		return r
	}
	p := r.URL.Path
	clean, ok := cleanPath(p)
	if p == "" || p[0] != '/' || !ok || !hasSegmentPrefix(clean, rt.base) {
		return r
	}
	u := *r.URL
	u.Path = ensureSlash(clean[len(rt.base):])
	u.RawPath = ""
	if clean == p && r.URL.RawPath != "" && strings.IndexByte(rt.base, '%') < 0 {
		if ep := r.URL.EscapedPath(); hasSegmentPrefix(ep, rt.base) {
			u.RawPath = ensureSlash(ep[len(rt.base):])
		}
	}
	r2 := r.WithContext(r.Context())
	r2.URL = &u
	if r.RequestURI != "" {
		r2.RequestURI = u.RequestURI()
	}
	return r2
}
