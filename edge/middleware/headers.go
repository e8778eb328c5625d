package middleware

import (
	"net/http"
	"strconv"
	"time"
)

// SecurityPolicy says which security headers SecurityHeaders adds to
// responses. It is plain data; "" leaves a header out.
type SecurityPolicy struct {
	// HSTS is the whole Strict-Transport-Security value, such as
	// "max-age=31536000; includeSubDomains; preload" (see HSTSValue).
	HSTS string
	// ContentTypeOptions is X-Content-Type-Options ("nosniff").
	ContentTypeOptions string
	// ReferrerPolicy is Referrer-Policy ("strict-origin-when-cross-origin").
	ReferrerPolicy string
	// FrameOptions is X-Frame-Options ("SAMEORIGIN" or "DENY").
	FrameOptions string
	// CSP is Content-Security-Policy.
	CSP string
	// PermissionsPolicy is Permissions-Policy.
	PermissionsPolicy string
	// Override makes these values replace those the backend (or a later
	// stage) set. false: a header already in the response wins.
	Override bool
	// KeepServer keeps the Server and X-Powered-By headers. false: they are
	// removed from every response, TLS or not.
	KeepServer bool
}

// DefaultSecurityPolicy is X-Content-Type-Options: nosniff,
// Referrer-Policy: strict-origin-when-cross-origin and X-Frame-Options:
// SAMEORIGIN, without HSTS, CSP or Permissions-Policy (each needs a decision
// about the site), not overriding the backend, and removing Server and
// X-Powered-By.
func DefaultSecurityPolicy() SecurityPolicy {
	return SecurityPolicy{
		ContentTypeOptions: "nosniff",
		ReferrerPolicy:     "strict-origin-when-cross-origin",
		FrameOptions:       "SAMEORIGIN",
	}
}

// HSTSValue formats a Strict-Transport-Security value (RFC 6797 §6.1):
// "max-age=N", N in whole seconds (a negative maxAge counts as 0, which
// tells browsers to forget the policy), then "; includeSubDomains" and
// "; preload" when asked.
func HSTSValue(maxAge time.Duration, includeSubdomains, preload bool) string {
	secs := int64(maxAge / time.Second)
	if secs < 0 {
		secs = 0
	}
	v := "max-age=" + strconv.FormatInt(secs, 10)
	if includeSubdomains {
		v += "; includeSubDomains"
	}
	if preload {
		v += "; preload"
	}
	return v
}

// SecurityHeaders adds the security headers of p to responses and removes
// Server and X-Powered-By (unless p.KeepServer).
//
//   - The security headers (HSTS among them) go only on responses to
//     requests that arrived over TLS (r.TLS != nil, which covers HTTP/1.1,
//     HTTP/2 and HTTP/3 over TLS). Plain-HTTP responses get none of them;
//     HSTS in particular must never be sent over plain HTTP (RFC 6797 §7.2):
//     a backend's Strict-Transport-Security is removed from them too.
//     A TLS-terminating proxy in front of Gatehouse therefore means no
//     security headers: X-Forwarded-Proto is not trusted for this.
//   - Server and X-Powered-By are removed from every final response, TLS or
//     not.
//   - Everything happens when the final response header goes out (see
//     finalWriter): 1xx responses such as 103 Early Hints pass untouched,
//     and a header the backend set is seen, and wins unless p.Override. A
//     101 Switching Protocols (or a Hijack before any WriteHeader) only has
//     Server and X-Powered-By removed. A handler that returns without
//     writing, or panics first (Recover then answers 500), still gets them.
//
// The writer handed to the next handler supports Flush, Hijack and, through
// Unwrap, the rest of http.ResponseController, so streaming and WebSockets
// work. Per request it allocates that writer and nothing else. The header values are shared, read-only slices: they are
// stored in the header map without copying, so code must not modify a
// value slice in place (appending, as Header.Add does, is fine).
func SecurityHeaders(p SecurityPolicy) Middleware {
	secure := &securityHook{strip: !p.KeepServer, override: p.Override}
	for _, f := range [...]struct{ key, value string }{
		{"Strict-Transport-Security", p.HSTS},
		{"X-Content-Type-Options", p.ContentTypeOptions},
		{"Referrer-Policy", p.ReferrerPolicy},
		{"X-Frame-Options", p.FrameOptions},
		{"Content-Security-Policy", p.CSP},
		{"Permissions-Policy", p.PermissionsPolicy},
	} {
		if f.value != "" {
			secure.set = append(secure.set, headerField{f.key, []string{f.value}})
		}
	}
	plain := &securityHook{strip: !p.KeepServer, dropHSTS: true}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hook := plain
			if r.TLS != nil {
				hook = secure
			}
			if hook.noop() {
				next.ServeHTTP(w, r)
				return
			}
			fw := &finalWriter{ResponseWriter: w, hook: hook}
			// Deferred so that a handler that never writes, or panics before
			// writing (Recover's 500 uses this header map), is covered.
			defer fw.finish(http.StatusOK)
			next.ServeHTTP(fw, r)
		})
	}
}

// headerField is one header with its value as a ready []string of length
// and capacity 1, shared by all responses: an append by Header.Add copies it.
type headerField struct {
	key  string
	vals []string
}

// securityHook is the finalHook of SecurityHeaders, one for TLS requests and
// one (without set) for plain HTTP. It is immutable.
type securityHook struct {
	set      []headerField
	override bool
	strip    bool // remove Server and X-Powered-By
	dropHSTS bool // remove Strict-Transport-Security (plain HTTP)
}

func (s *securityHook) noop() bool { return !s.strip && !s.dropHSTS && len(s.set) == 0 }

func (s *securityHook) final(h http.Header, status int) {
	if s.strip {
		delete(h, "Server")
		delete(h, "X-Powered-By")
	}
	if s.dropHSTS {
		delete(h, "Strict-Transport-Security")
	}
	if status == http.StatusSwitchingProtocols {
		return
	}
	for _, f := range s.set {
		if s.override || len(h[f.key]) == 0 {
			h[f.key] = f.vals
		}
	}
}
