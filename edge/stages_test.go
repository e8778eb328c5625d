package edge

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

const stagesDoc = `
global: {listen: 127.0.0.1, http_port: 1, admin: "off"}
sites:
  - hosts: [cached.example]
    tls: internal
    cache: true
    headers: {csp: "default-src 'self'"}
    routes:
      - path: /
        respond: {body: "hello\n", headers: {Cache-Control: max-age=60, Server: leaky}}
        headers: {response: {add: {X-Route: one}}}
  - hosts: [plain.example]
    tls: internal
    headers: {security: false}
    routes: [{path: /, respond: {body: "plain\n", headers: {Cache-Control: max-age=60}}}]
`

func stagesRuntime(tb testing.TB) (*Runtime, *cache.Cache) {
	tb.Helper()
	c, err := cache.New(cache.Options{MaxSize: 1 << 20, Logger: quiet()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	cfg, err := config.Parse("test.yaml", []byte(stagesDoc))
	if err != nil {
		tb.Fatal(err)
	}
	rt, err := newRuntime(cfg, quiet(), nil, c, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(rt.Close)
	return rt, c
}

func tlsRequest(host string) *http.Request {
	r := httptest.NewRequest("GET", "https://"+host+"/", nil)
	r.TLS = &tls.ConnectionState{ServerName: host, HandshakeComplete: true}
	return r
}

// TestSiteStages checks the per-site part of the stack end to end: the
// second request is a cache hit, security headers and route header edits
// are on both, Server is removed, and a site with security: false and no
// cache gets none of it.
func TestSiteStages(t *testing.T) {
	t.Parallel()
	rt, c := stagesRuntime(t)
	for i, want := range []string{"fwd=uri-miss", "hit"} {
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, tlsRequest("cached.example"))
		h := w.Result().Header
		if w.Code != 200 || w.Body.String() != "hello\n" {
			t.Fatalf("request %d: %d %q", i, w.Code, w.Body.String())
		}
		if cs := h.Get("Cache-Status"); !strings.Contains(cs, want) {
			t.Errorf("request %d: Cache-Status %q, want %s", i, cs, want)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'self'",
			"X-Frame-Options": "SAMEORIGIN", "X-Route": "one", "Server": "", "Strict-Transport-Security": ""} {
			if got := h.Get(k); got != v {
				t.Errorf("request %d: %s = %q, want %q", i, k, got, v)
			}
		}
	}
	if s := c.Stats(); s.Hits != 1 || s.Stored != 1 {
		t.Errorf("stats = %+v, want 1 hit, 1 stored", s)
	}
	w := httptest.NewRecorder()
	rt.ServeHTTP(w, tlsRequest("plain.example"))
	if h := w.Result().Header; h.Get("Cache-Status") != "" || h.Get("X-Content-Type-Options") != "" {
		t.Errorf("plain site got stages: %v", h)
	}
}

// BenchmarkStackCacheHit is one HTTPS request through the whole stack
// (recover, request id, access log to a discarded handler, lookup, security
// headers, cache hit, route header edits).
func BenchmarkStackCacheHit(b *testing.B) {
	rt, _ := stagesRuntime(b)
	w := httptest.NewRecorder()
	rt.ServeHTTP(w, tlsRequest("cached.example"))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, tlsRequest("cached.example"))
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}
