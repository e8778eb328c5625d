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
	rt, err := newRuntime(cfg, quiet(), shared{cache: c}, nil)
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

// TestAccessStages: a route's rate limit answers 429 once its burst is
// spent (auth failures count too), auth answers 401 without a valid token
// and lets a good one through; an unchanged limiter survives a reload.
func TestAccessStages(t *testing.T) {
	t.Setenv("GH_TOKEN", "token-0123456789abcdef")
	doc := `
global: {listen: 127.0.0.1, http_port: 1, admin: "off"}
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - path: /
        respond: {body: "ok\n"}
        rate_limit: {requests: 3, per: 1h}
        auth: {bearer: ["${GH_TOKEN}"]}
`
	cfg := mustParse(t, doc)
	srv, err := New(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Runtime().Close(); srv.closeCache() })
	get := func(token string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "http://a.example/", nil)
		r.RemoteAddr = "192.0.2.7:1234"
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		return w
	}
	if w := get(""); w.Code != 401 || !strings.Contains(w.Header().Get("Www-Authenticate"), `Bearer realm="gatehouse"`) {
		t.Fatalf("no token: %d %v", w.Code, w.Header())
	}
	if w := get("token-0123456789abcdef"); w.Code != 200 || w.Body.String() != "ok\n" {
		t.Fatalf("good token: %d %q", w.Code, w.Body.String())
	}
	if err := srv.Reload(mustParse(t, doc)); err != nil {
		t.Fatal(err)
	}
	if w := get("token-0123456789abcdef"); w.Code != 200 {
		t.Fatalf("third request (after reload): %d", w.Code)
	}
	if w := get("token-0123456789abcdef"); w.Code != 429 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("fourth request: %d %v, want 429 with Retry-After (the bucket carried over the reload)", w.Code, w.Header())
	}
	// A reload that changes trusted_proxies builds a new limiter: the old
	// one resolves clients with the old list.
	if err := srv.Reload(mustParse(t, strings.Replace(doc, `admin: "off"}`, `admin: "off", trusted_proxies: [10.0.0.1]}`, 1))); err != nil {
		t.Fatal(err)
	}
	if w := get("token-0123456789abcdef"); w.Code != 200 {
		t.Fatalf("after trusted_proxies changed: %d, want 200 from a new limiter", w.Code)
	}
}
