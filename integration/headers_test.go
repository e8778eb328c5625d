package integration

// Security headers (site headers:) and per-route header edits (route
// headers:) through the binary, over HTTPS with the internal CA and over
// plain HTTP.

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// securityHeaderNames are the headers the security stage adds over TLS.
var securityHeaderNames = []string{
	"Strict-Transport-Security", "X-Content-Type-Options", "Referrer-Policy",
	"X-Frame-Options", "Content-Security-Policy", "Permissions-Policy",
}

// headersBackend sets the headers a typical application server leaks, plus
// X-Frame-Options/Referrer-Policy of its own on paths ending in /deny, and
// echoes the request as JSON.
func headersBackend(t testing.TB) string {
	t.Helper()
	echo := echoHandler("hdr")
	return newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Server", "backend-server/1.0")
		h.Set("X-Powered-By", "PHP/8.3")
		h.Set("X-Internal-Trace", "trace-123")
		h.Set("X-Served-By", "backend")
		if strings.HasPrefix(r.URL.Path, "/cacheable/") {
			h.Set("Cache-Control", "max-age=60")
		}
		if strings.HasSuffix(r.URL.Path, "/deny") {
			h.Set("X-Frame-Options", "DENY")
			h.Set("Referrer-Policy", "no-referrer")
		}
		echo(w, r)
	}).URL
}

// headersGateway serves several tls: internal sites under *.localhost with
// different headers: settings, and one tls: off site.
type headersGateway struct {
	*Gateway
	roots *x509.CertPool
	tg    *tlsGateway
}

func startHeadersGateway(t *testing.T) *headersGateway {
	t.Helper()
	be := headersBackend(t)
	g := startGateway(t, GatewayConfig{
		Global: "http3: false",
		Body: fmt.Sprintf(`
upstreams:
  app:
    backends:
      - url: %s
sites:
  - hosts: [localhost]
    tls: internal
    routes:
      - path: /rh/
        upstream: app
        headers:
          request: {set: {X-Env: prod}, remove: [X-Debug]}
          response: {add: {X-Served-By: gatehouse}, remove: [X-Internal-Trace]}
      - path: /fixed
        respond: {status: 200, body: "fixed\n"}
      - path: /
        upstream: app
  - hosts: [hsts.localhost]
    tls: internal
    headers:
      hsts: {max_age: 1d, include_subdomains: true}
      csp: "default-src 'self'"
      permissions_policy: "camera=(), geolocation=()"
    routes:
      - path: /
        upstream: app
  - hosts: [override.localhost]
    tls: internal
    headers: {override: true, referrer_policy: same-origin}
    routes:
      - path: /
        upstream: app
  - hosts: [keep.localhost]
    tls: internal
    headers: {keep_server: true, frame_options: "off", referrer_policy: "off"}
    routes:
      - path: /
        upstream: app
  - hosts: [nosec.localhost]
    tls: internal
    headers: {security: false, hsts: {max_age: 1d}}
    routes:
      - path: /
        upstream: app
  - hosts: [cached.localhost]
    tls: internal
    cache: true
    routes:
      - path: /
        upstream: app
  - hosts: [plain.test]
    tls: off
    headers:
      hsts: {max_age: 1d, include_subdomains: true}
      csp: "default-src 'self'"
      permissions_policy: "camera=()"
      override: true
    routes:
      - path: /
        upstream: app
`, be),
	})
	hg := &headersGateway{Gateway: g}
	hg.tg = &tlsGateway{Proc: g.Proc, t: t, ConfigPath: g.ConfigPath, DataDir: g.DataDir, HTTPPort: g.HTTPPort, HTTPSPort: g.HTTPSPort}
	hg.roots = waitInternalRoot(t, g.Proc, g.DataDir, hg.tg.HTTPSAddr())
	return hg
}

// get fetches path from host over HTTPS (HTTP/2 when h2) with SNI host,
// after waiting for host's certificate.
func (hg *headersGateway) get(t *testing.T, host, path string, h2 bool, hdr http.Header) (*http.Response, string) {
	t.Helper()
	waitCert(t, hg.tg, host, hg.roots)
	tr := tlsTransport(hg.HTTPSPort, host, hg.roots, h2)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s:%d%s", host, hg.HTTPSPort, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET https://%s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET https://%s%s: reading body: %v", host, path, err)
	}
	if h2 && resp.ProtoMajor != 2 {
		t.Errorf("GET https://%s%s over %s, want HTTP/2", host, path, resp.Proto)
	}
	return resp, string(body)
}

// wantHeader checks that h has exactly one value for name, equal to want
// ("" means absent).
func wantHeader(t *testing.T, where string, h http.Header, name, want string) {
	t.Helper()
	got := h.Values(name)
	switch {
	case want == "" && len(got) != 0:
		t.Errorf("%s: %s = %q, want none", where, name, got)
	case want != "" && (len(got) != 1 || got[0] != want):
		t.Errorf("%s: %s = %q, want %q", where, name, got, want)
	}
}

func TestHeadersSecurity(t *testing.T) {
	t.Parallel()
	hg := startHeadersGateway(t)

	t.Run("defaults over HTTPS", func(t *testing.T) {
		t.Parallel()
		for _, h2 := range []bool{false, true} {
			for _, path := range []string{"/app", "/fixed"} {
				where := fmt.Sprintf("localhost%s (h2 %v)", path, h2)
				resp, body := hg.get(t, "localhost", path, h2, nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%s = %d %q", where, resp.StatusCode, body)
				}
				wantHeader(t, where, resp.Header, "X-Content-Type-Options", "nosniff")
				wantHeader(t, where, resp.Header, "Referrer-Policy", "strict-origin-when-cross-origin")
				wantHeader(t, where, resp.Header, "X-Frame-Options", "SAMEORIGIN")
				// No HSTS by default for a site on the internal CA.
				wantHeader(t, where, resp.Header, "Strict-Transport-Security", "")
				wantHeader(t, where, resp.Header, "Content-Security-Policy", "")
				wantHeader(t, where, resp.Header, "Permissions-Policy", "")
				wantHeader(t, where, resp.Header, "Server", "")
				wantHeader(t, where, resp.Header, "X-Powered-By", "")
			}
		}
	})

	t.Run("the backend's own values win", func(t *testing.T) {
		t.Parallel()
		resp, _ := hg.get(t, "localhost", "/x/deny", false, nil)
		wantHeader(t, "localhost/x/deny", resp.Header, "X-Frame-Options", "DENY")
		wantHeader(t, "localhost/x/deny", resp.Header, "Referrer-Policy", "no-referrer")
		wantHeader(t, "localhost/x/deny", resp.Header, "X-Content-Type-Options", "nosniff")
	})

	t.Run("override replaces the backend's values", func(t *testing.T) {
		t.Parallel()
		resp, _ := hg.get(t, "override.localhost", "/x/deny", false, nil)
		wantHeader(t, "override.localhost/x/deny", resp.Header, "X-Frame-Options", "SAMEORIGIN")
		wantHeader(t, "override.localhost/x/deny", resp.Header, "Referrer-Policy", "same-origin")
		wantHeader(t, "override.localhost/x/deny", resp.Header, "X-Content-Type-Options", "nosniff")
	})

	t.Run("hsts, csp and permissions_policy", func(t *testing.T) {
		t.Parallel()
		for _, h2 := range []bool{false, true} {
			where := fmt.Sprintf("hsts.localhost (h2 %v)", h2)
			resp, _ := hg.get(t, "hsts.localhost", "/", h2, nil)
			wantHeader(t, where, resp.Header, "Strict-Transport-Security", "max-age=86400; includeSubDomains")
			wantHeader(t, where, resp.Header, "Content-Security-Policy", "default-src 'self'")
			wantHeader(t, where, resp.Header, "Permissions-Policy", "camera=(), geolocation=()")
			wantHeader(t, where, resp.Header, "X-Content-Type-Options", "nosniff")
			wantHeader(t, where, resp.Header, "Server", "")
		}
	})

	t.Run("keep_server and headers turned off", func(t *testing.T) {
		t.Parallel()
		resp, _ := hg.get(t, "keep.localhost", "/", false, nil)
		wantHeader(t, "keep.localhost", resp.Header, "Server", "backend-server/1.0")
		wantHeader(t, "keep.localhost", resp.Header, "X-Powered-By", "PHP/8.3")
		wantHeader(t, "keep.localhost", resp.Header, "X-Frame-Options", "")
		wantHeader(t, "keep.localhost", resp.Header, "Referrer-Policy", "")
		wantHeader(t, "keep.localhost", resp.Header, "X-Content-Type-Options", "nosniff")
	})

	t.Run("security: false turns the stage off", func(t *testing.T) {
		t.Parallel()
		resp, _ := hg.get(t, "nosec.localhost", "/", false, nil)
		for _, name := range securityHeaderNames {
			wantHeader(t, "nosec.localhost", resp.Header, name, "")
		}
		// The whole stage is off, Server removal included.
		wantHeader(t, "nosec.localhost", resp.Header, "Server", "backend-server/1.0")
	})

	t.Run("plain HTTP gets no security headers", func(t *testing.T) {
		t.Parallel()
		for _, path := range []string{"/", "/x/deny"} {
			r := hg.Get(t, "plain.test", path)
			where := "http://plain.test" + path
			if r.Status != 200 {
				t.Fatalf("%s = %d %q", where, r.Status, r.Body)
			}
			for _, name := range securityHeaderNames {
				if name == "X-Frame-Options" || name == "Referrer-Policy" {
					continue // the backend's own, checked below
				}
				wantHeader(t, where, r.Header, name, "")
			}
			if strings.HasSuffix(path, "/deny") {
				// override: true does not apply over plain HTTP either.
				wantHeader(t, where, r.Header, "X-Frame-Options", "DENY")
			} else {
				wantHeader(t, where, r.Header, "X-Frame-Options", "")
				wantHeader(t, where, r.Header, "Referrer-Policy", "")
			}
			wantHeader(t, where, r.Header, "Server", "")
			wantHeader(t, where, r.Header, "X-Powered-By", "")
		}
		// A TLS site's plain-HTTP redirect carries no HSTS either.
		r := hg.Get(t, "hsts.localhost", "/")
		if r.Status != http.StatusPermanentRedirect {
			t.Errorf("http://hsts.localhost/ = %d, want 308 to HTTPS", r.Status)
		}
		wantHeader(t, "http://hsts.localhost/", r.Header, "Strict-Transport-Security", "")
	})

	t.Run("cached responses get them too", func(t *testing.T) {
		t.Parallel()
		for i, h2 := range []bool{false, true, false} {
			where := fmt.Sprintf("cached.localhost GET #%d (h2 %v)", i+1, h2)
			resp, _ := hg.get(t, "cached.localhost", "/cacheable/x/deny", h2, nil)
			cs := resp.Header.Get("Cache-Status")
			if hit := strings.Contains(cs, "; hit"); hit != (i > 0) {
				t.Errorf("%s: Cache-Status %q, want a hit from the second request on", where, cs)
			}
			wantHeader(t, where, resp.Header, "X-Content-Type-Options", "nosniff")
			wantHeader(t, where, resp.Header, "X-Frame-Options", "DENY") // the stored backend value still wins
			wantHeader(t, where, resp.Header, "Server", "")
			wantHeader(t, where, resp.Header, "X-Powered-By", "")
			wantHeader(t, where, resp.Header, "Strict-Transport-Security", "")
		}
	})

	t.Run("route header edits", func(t *testing.T) {
		t.Parallel()
		hdr := http.Header{"X-Debug": {"1"}, "X-Env": {"dev"}, "X-Other": {"kept"}}
		resp, body := hg.get(t, "localhost", "/rh/x", false, hdr)
		var e echoed
		if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET localhost/rh/x = %d %q", resp.StatusCode, body)
		}
		if got := e.Header.Values("X-Env"); !slices.Equal(got, []string{"prod"}) {
			t.Errorf("backend saw X-Env %q, want [prod] (set replaces the client's)", got)
		}
		if got := e.Header.Values("X-Debug"); len(got) != 0 {
			t.Errorf("backend saw X-Debug %q, want it removed", got)
		}
		if got := e.Header.Get("X-Other"); got != "kept" {
			t.Errorf("backend saw X-Other %q, want kept", got)
		}
		if got := resp.Header.Values("X-Served-By"); !slices.Equal(got, []string{"backend", "gatehouse"}) {
			t.Errorf("X-Served-By = %q, want [backend gatehouse] (add appends)", got)
		}
		wantHeader(t, "localhost/rh/x", resp.Header, "X-Internal-Trace", "")
		// The security stage still runs on an edited route.
		wantHeader(t, "localhost/rh/x", resp.Header, "X-Content-Type-Options", "nosniff")
		wantHeader(t, "localhost/rh/x", resp.Header, "Server", "")

		// Other routes of the site are not edited.
		resp, body = hg.get(t, "localhost", "/other", false, hdr)
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("GET localhost/other: %q", body)
		}
		if got := e.Header.Get("X-Debug"); got != "1" {
			t.Errorf("route without edits: backend saw X-Debug %q, want 1", got)
		}
		wantHeader(t, "localhost/other", resp.Header, "X-Internal-Trace", "trace-123")
		wantHeader(t, "localhost/other", resp.Header, "X-Served-By", "backend")
	})
}
