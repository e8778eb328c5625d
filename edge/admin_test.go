package edge

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/upstream"
)

const adminDoc = `
global: {listen: 127.0.0.1, http_port: 1, admin: 127.0.0.1:2019}
upstreams:
  api: {backends: [{url: "http://127.0.0.1:9"}]}
sites:
  - hosts: [cached.example]
    tls: off
    cache: true
    routes: [{path: /, respond: {body: "hello\n", headers: {Cache-Control: max-age=60}}}, {path: /api/, upstream: api}]
`

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	srv, err := New(mustParse(t, adminDoc), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Runtime().Close(); srv.closeCache() })
	admin := srv.adminHandler()
	do := func(method, target string, hdr map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, target, nil)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		admin.ServeHTTP(w, r)
		return w
	}
	// Fill the cache through the gateway.
	for range 2 {
		srv.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "http://cached.example/", nil))
	}

	tests := []struct {
		name, method, target string
		hdr                  map[string]string
		status               int
		body                 string
	}{
		{"healthz", "GET", "http://127.0.0.1:2019/healthz", nil, 200, "ok\n"},
		{"localhost host", "GET", "http://localhost:2019/healthz", nil, 200, "ok\n"},
		{"IPv6 loopback host", "GET", "http://[::1]:2019/healthz", nil, 200, "ok\n"},
		{"rebinding host", "GET", "http://evil.example:2019/upstreams", nil, 403, "loopback host"},
		{"cross-site purge", "POST", "http://127.0.0.1:2019/cache/purge?prefix=http://cached.example/", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, ""},
		{"foreign origin purge", "POST", "http://127.0.0.1:2019/cache/purge?prefix=http://cached.example/", map[string]string{"Origin": "http://evil.example"}, 403, ""},
		{"purge without target", "POST", "http://127.0.0.1:2019/cache/purge", nil, 400, "exactly one of"},
		{"purge both", "POST", "http://127.0.0.1:2019/cache/purge?url=http://a/&prefix=http://a/", nil, 400, "exactly one of"},
		{"purge relative", "POST", "http://127.0.0.1:2019/cache/purge?url=/x", nil, 400, "absolute"},
		{"purge GET", "GET", "http://127.0.0.1:2019/cache/purge?url=http://cached.example/", nil, 405, ""},
		{"purge", "POST", "http://127.0.0.1:2019/cache/purge?url=http://cached.example/", nil, 200, `"purged": 1`},
		{"purge again", "POST", "http://127.0.0.1:2019/cache/purge?url=http://cached.example/", nil, 200, `"purged": 0`},
	}
	for _, tt := range tests {
		w := do(tt.method, tt.target, tt.hdr)
		if w.Code != tt.status || !strings.Contains(w.Body.String(), tt.body) {
			t.Errorf("%s: %d %q, want %d containing %q", tt.name, w.Code, w.Body.String(), tt.status, tt.body)
		}
	}

	w := do("GET", "http://127.0.0.1:2019/upstreams", nil)
	var pools []upstream.PoolStatus
	if err := json.Unmarshal(w.Body.Bytes(), &pools); err != nil || len(pools) != 1 || pools[0].Name != "api" || len(pools[0].Backends) != 1 {
		t.Errorf("/upstreams = %s (%v)", w.Body.String(), err)
	}
	w = do("GET", "http://127.0.0.1:2019/metrics", nil)
	for _, want := range []string{
		`gatehouse_http_requests_total{code="2xx",proto="h1",route="cached.example/",site="cached.example"} 2`,
		`gatehouse_cache_hits_total 1`,
		`gatehouse_upstream_backend_healthy{backend="http://127.0.0.1:9",pool="api"} 1`,
		`gatehouse_config_reloads_total{result="failure"} 0`,
		`gatehouse_http_requests_in_flight 0`,
	} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	w = do("GET", "http://127.0.0.1:2019/cache", nil)
	if !strings.Contains(w.Body.String(), `"enabled": true`) || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("/cache = %s", w.Body.String())
	}
}

// TestAdminReloadAndPlanBadInput: a server with nothing to reload answers
// 409; a plan of a broken file is 422 with positions; an oversized plan
// body is 413.
func TestAdminReloadAndPlanBadInput(t *testing.T) {
	t.Parallel()
	srv, err := New(mustParse(t, adminDoc), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Runtime().Close(); srv.closeCache() })
	admin := srv.adminHandler()
	post := func(path, body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		admin.ServeHTTP(w, httptest.NewRequest("POST", "http://127.0.0.1:2019"+path, strings.NewReader(body)))
		return w
	}
	if w := post("/reload", ""); w.Code != 409 || !strings.Contains(w.Body.String(), "nothing to reload") {
		t.Errorf("/reload without a source: %d %s", w.Code, w.Body.String())
	}
	if w := post("/plan?name=new.yaml", "global: {http_prot: 1}\n"); w.Code != 422 || !strings.Contains(w.Body.String(), "new.yaml:1:10: unknown key") {
		t.Errorf("/plan of a broken file: %d %s", w.Code, w.Body.String())
	}
	if w := post("/plan", strings.Repeat("#", maxPlanBody+1)); w.Code != 413 {
		t.Errorf("/plan of an oversized body: %d", w.Code)
	}
}
