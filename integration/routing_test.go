package integration

import (
	"fmt"
	"net/http"
	"testing"
)

// routingConfig has no catch-all site, so an unknown host gets 404.
const routingConfig = `
upstreams:
  api:
    backends:
      - url: %[1]s
sites:
  - hosts: [exact.test]
    tls: off
    routes:
      - path: /api
        respond: {status: 200, body: "api\n"}
      - path: /api/v2
        respond: {status: 200, body: "api-v2\n"}
      - path: /files/
        respond: {status: 200, body: "files\n"}
      - path: /teapot
        respond: {status: 418, body: "short and stout\n"}
      - path: /old
        redirect: {to: "https://example.net/new", status: 301}
      - path: /moved
        redirect: {to: "/new-place", status: 308}
      - path: /found
        redirect: {to: "https://example.net/found", status: 302}
  - hosts: ["*.wild.test"]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "wildcard\n"}
  - hosts: [a.wild.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "exact-a\n"}
  - hosts: [strip.test]
    tls: off
    routes:
      - path: /api/
        strip_prefix: true
        upstream: api
      - path: /inline
        upstream: [%[1]s]
      - path: /
        upstream: api
`

// TestRouting drives one gateway through host matching, path matching,
// fixed responses, redirects, prefix stripping and path sanitising.
func TestRouting(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("echo"))
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(routingConfig, be.URL)})

	t.Run("paths", func(t *testing.T) {
		t.Parallel()
		cases := []struct {
			path   string
			status int
			body   string // "" means an error body is expected
		}{
			{"/api", 200, "api\n"},
			{"/api/", 200, "api\n"},
			{"/api/x", 200, "api\n"},
			{"/api/x/y?z=1", 200, "api\n"},
			{"/apix", 404, ""},
			{"/api/v2", 200, "api-v2\n"},
			{"/api/v2/", 200, "api-v2\n"},
			{"/api/v2/deep/er", 200, "api-v2\n"},
			{"/api/v2x", 200, "api\n"},
			{"/files", 200, "files\n"},
			{"/files/", 200, "files\n"},
			{"/files/a/b.txt", 200, "files\n"},
			{"/filesx", 404, ""},
			{"/", 404, ""},
			{"/nothing/here", 404, ""},
			{"/teapot", 418, "short and stout\n"},
			{"/teapot/pour", 418, "short and stout\n"},
		}
		for _, c := range cases {
			r := g.Get(t, "exact.test", c.path)
			if c.body == "" {
				t.Run(c.path, func(t *testing.T) { assertErrorBody(t, r, c.status, "127.0.0.1") })
				continue
			}
			if r.Status != c.status || r.Body != c.body {
				t.Errorf("GET exact.test%s = %d %q, want %d %q", c.path, r.Status, r.Body, c.status, c.body)
			}
		}
	})

	t.Run("hosts", func(t *testing.T) {
		t.Parallel()
		cases := []struct {
			host, path string
			status     int
			body       string
		}{
			{"exact.test", "/api", 200, "api\n"},
			{"EXACT.Test", "/api", 200, "api\n"},
			{"exact.test:8080", "/api", 200, "api\n"},
			{"EXACT.TEST:1", "/api/v2", 200, "api-v2\n"},
			{"x.wild.test", "/", 200, "wildcard\n"},
			{"X.Wild.TEST:99", "/anything", 200, "wildcard\n"},
			{"a.wild.test", "/", 200, "exact-a\n"},
			{"A.WILD.test:443", "/deep/path", 200, "exact-a\n"},
			{"b.a.wild.test", "/", 404, ""}, // a wildcard covers one label only
			{"wild.test", "/", 404, ""},
			{"other.test", "/api", 404, ""},
			{"127.0.0.1", "/api", 404, ""},
		}
		for _, c := range cases {
			r := g.Get(t, c.host, c.path)
			if c.body == "" {
				t.Run(c.host, func(t *testing.T) { assertErrorBody(t, r, c.status, "127.0.0.1:") })
				continue
			}
			if r.Status != c.status || r.Body != c.body {
				t.Errorf("GET %s%s = %d %q, want %d %q", c.host, c.path, r.Status, r.Body, c.status, c.body)
			}
		}
	})

	t.Run("redirect", func(t *testing.T) {
		t.Parallel()
		cases := []struct {
			path     string
			status   int
			location string
		}{
			{"/old", 301, "https://example.net/new"},
			{"/old?x=1", 301, "https://example.net/new"},
			{"/old/sub", 301, "https://example.net/new"},
			{"/moved", 308, "/new-place"},
			{"/found", 302, "https://example.net/found"},
		}
		for _, c := range cases {
			r := g.Get(t, "exact.test", c.path)
			if r.Status != c.status || r.Header.Get("Location") != c.location {
				t.Errorf("GET %s = %d Location %q, want %d Location %q",
					c.path, r.Status, r.Header.Get("Location"), c.status, c.location)
			}
		}
	})

	t.Run("strip_prefix", func(t *testing.T) {
		t.Parallel()
		cases := []struct{ path, backendURI string }{
			{"/api/users?x=1", "/users?x=1"},
			{"/api/users/42/posts", "/users/42/posts"},
			{"/api/", "/"},
			{"/api", "/"},
			{"/apiary/x?y=2", "/apiary/x?y=2"}, // not under /api/: the "/" route, unstripped
			{"/other/x?y=2", "/other/x?y=2"},
			{"/inline/a/b?q=3", "/inline/a/b?q=3"}, // inline upstream list
		}
		for _, c := range cases {
			e := decodeEcho(t, g.Get(t, "strip.test", c.path))
			if e.RequestURI != c.backendURI {
				t.Errorf("GET strip.test%s: backend saw %q, want %q", c.path, e.RequestURI, c.backendURI)
			}
			if e.Host != "strip.test" {
				t.Errorf("GET strip.test%s: backend saw Host %q, want strip.test", c.path, e.Host)
			}
		}
	})

	t.Run("bad_paths", func(t *testing.T) {
		t.Parallel()
		// Sent raw: Go's client would not send these request lines as written.
		bad := []string{
			"/../etc",
			"/..",
			"/a/../../b",
			"/api/../../etc/passwd",
			"/a/%2e%2e/%2e%2e/b",
			"/%2e%2e/etc",
			"/a/%2E%2E/%2e%2E/b",
			"/a/%00b",
			"/%00",
			"/api/x%00.txt",
		}
		for _, p := range bad {
			r := rawRequest(t, g.Addr, "GET "+p+" HTTP/1.1\r\nHost: strip.test\r\nConnection: close\r\n\r\n")
			t.Run(p, func(t *testing.T) { assertErrorBody(t, r, http.StatusBadRequest, be.Listener.Addr().String()) })
		}
		// Dots in the query are not a path: the request is proxied as usual.
		r := rawRequest(t, g.Addr, "GET /a/b?q=../../x HTTP/1.1\r\nHost: strip.test\r\nConnection: close\r\n\r\n")
		if e := decodeEcho(t, r); e.RequestURI != "/a/b?q=../../x" {
			t.Errorf("backend saw %q, want /a/b?q=../../x", e.RequestURI)
		}
	})
}

// TestRoutingHostPrecedence checks exact > *.wildcard > "*" whatever the
// order the sites are listed in.
func TestRoutingHostPrecedence(t *testing.T) {
	t.Parallel()
	g := startGateway(t, GatewayConfig{Body: `
sites:
  - hosts: ["*"]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "any\n"}
  - hosts: ["*.wild.test"]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "wildcard\n"}
  - hosts: [exact.test, a.wild.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "exact\n"}
`})
	cases := []struct{ host, body string }{
		{"exact.test", "exact\n"},
		{"Exact.Test:123", "exact\n"},
		{"a.wild.test", "exact\n"},
		{"x.wild.test", "wildcard\n"},
		{"X.WILD.TEST:8080", "wildcard\n"},
		{"b.a.wild.test", "any\n"},
		{"wild.test", "any\n"},
		{"other.test", "any\n"},
		{"127.0.0.1", "any\n"},
	}
	for _, c := range cases {
		t.Run(c.host, func(t *testing.T) {
			t.Parallel()
			r := g.Get(t, c.host, "/some/path")
			if r.Status != 200 || r.Body != c.body {
				t.Errorf("GET %s = %d %q, want 200 %q", c.host, r.Status, r.Body, c.body)
			}
		})
	}
}
