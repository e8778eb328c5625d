package cache

import (
	"net/http"
	"testing"
	"time"
)

// etagOrigin answers 304 to a matching If-None-Match and counts the 304s.
func etagOrigin(cacheControl string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", cacheControl)
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = w.Write([]byte("hello"))
	}
}

// RFC 9111 §5.2.1 (request directives) and §5.4 (Pragma), against a stored
// response with max-age=100 whose age is set by moving the clock.
func TestRequestDirectives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		respCC   string
		age      time.Duration
		req      []string
		wantCS   string
		wantCode int
		wantHits int64 // origin hits including the first fetch
	}{
		{name: "fresh hit", respCC: "max-age=100", age: 10 * time.Second, wantCS: "gatehouse; hit; ttl=90", wantHits: 1},
		{name: "no-cache revalidates", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "no-cache"},
			wantCS: "gatehouse; fwd=request; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "Pragma no-cache revalidates", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Pragma", "no-cache"},
			wantCS: "gatehouse; fwd=request; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "Pragma ignored with Cache-Control", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Pragma", "no-cache", "Cache-Control", "max-stale"},
			wantCS: "gatehouse; hit; ttl=90", wantHits: 1},
		{name: "max-age exceeded", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "max-age=5"},
			wantCS: "gatehouse; fwd=request; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "max-age satisfied", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "max-age=20"}, wantCS: "gatehouse; hit; ttl=90", wantHits: 1},
		{name: "min-fresh not met", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "min-fresh=95"},
			wantCS: "gatehouse; fwd=request; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "min-fresh met", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "min-fresh=50"}, wantCS: "gatehouse; hit; ttl=90", wantHits: 1},
		{name: "stale is revalidated", respCC: "max-age=100", age: 120 * time.Second,
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "max-stale without value", respCC: "max-age=100", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale"}, wantCS: "gatehouse; hit; ttl=-20", wantHits: 1},
		{name: "max-stale within", respCC: "max-age=100", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale=30"}, wantCS: "gatehouse; hit; ttl=-20", wantHits: 1},
		{name: "max-stale exceeded", respCC: "max-age=100", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale=10"},
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "must-revalidate forbids max-stale", respCC: "max-age=100, must-revalidate", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale"},
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "proxy-revalidate forbids max-stale", respCC: "max-age=100, proxy-revalidate", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale"},
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "s-maxage forbids max-stale", respCC: "s-maxage=100", age: 120 * time.Second, req: []string{"Cache-Control", "max-stale"},
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=100; stored", wantHits: 2},
		{name: "response no-cache always revalidates", respCC: "no-cache", age: 0,
			wantCS: "gatehouse; fwd=stale; fwd-status=304; ttl=0; stored", wantHits: 2},
		{name: "only-if-cached fresh", respCC: "max-age=100", age: 10 * time.Second, req: []string{"Cache-Control", "only-if-cached"}, wantCS: "gatehouse; hit; ttl=90", wantHits: 1},
		{name: "only-if-cached stale", respCC: "max-age=100", age: 120 * time.Second, req: []string{"Cache-Control", "only-if-cached"},
			wantCS: "gatehouse; fwd=stale; detail=only-if-cached", wantCode: http.StatusGatewayTimeout, wantHits: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, etagOrigin(tc.respCC))
			env.get("/r")
			env.waitIdle()
			env.clock.Advance(tc.age)
			r := env.get("/r", tc.req...)
			expectStatus(t, r, tc.wantCS)
			code := tc.wantCode
			if code == 0 {
				code = http.StatusOK
			}
			if r.status != code {
				t.Fatalf("status = %d, want %d", r.status, code)
			}
			if code == http.StatusOK && r.body != "hello" {
				t.Fatalf("body = %q", r.body)
			}
			if got := env.hits.Load(); got != tc.wantHits {
				t.Fatalf("origin hits = %d, want %d", got, tc.wantHits)
			}
		})
	}
}

// RFC 9111 §5.2.1.7: only-if-cached on a miss is a 504 without forwarding.
func TestOnlyIfCachedMiss(t *testing.T) {
	t.Parallel()
	env := newEnv(t, etagOrigin("max-age=100"))
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		r, err := env.do(m, "/nothing", "Cache-Control", "only-if-cached")
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusGatewayTimeout {
			t.Fatalf("%s status = %d, want 504", m, r.status)
		}
		expectStatus(t, r, "gatehouse; fwd=uri-miss; detail=only-if-cached")
	}
	if env.hits.Load() != 0 {
		t.Fatalf("origin hits = %d, want 0", env.hits.Load())
	}
}

// RFC 9111 §4.3.2: a fresh stored response answers the client's conditionals.
func TestClientConditionals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		req      []string
		wantCode int
	}{
		{"If-None-Match matches", []string{"If-None-Match", `"v1"`}, 304},
		{"If-None-Match weak comparison", []string{"If-None-Match", `W/"v1"`}, 304},
		{"If-None-Match list", []string{"If-None-Match", `"a", "v1"`}, 304},
		{"If-None-Match star", []string{"If-None-Match", `*`}, 304},
		{"If-None-Match differs", []string{"If-None-Match", `"v2"`}, 200},
		{"If-Modified-Since later", []string{"If-Modified-Since", "+1h"}, 304},
		{"If-Modified-Since equal", []string{"If-Modified-Since", "+0s"}, 304},
		{"If-Modified-Since earlier", []string{"If-Modified-Since", "-1h"}, 200},
		{"If-None-Match takes precedence", []string{"If-None-Match", `"v2"`, "If-Modified-Since", "+1h"}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lastMod := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=100")
				w.Header().Set("ETag", `"v1"`)
				w.Header().Set("Last-Modified", httpDate(lastMod))
				_, _ = w.Write([]byte("hello"))
			})
			env.get("/c")
			env.waitIdle()
			req := append([]string(nil), tc.req...)
			for i := 1; i < len(req); i += 2 {
				if req[i-1] == "If-Modified-Since" {
					d, _ := time.ParseDuration(req[i])
					req[i] = httpDate(lastMod.Add(d))
				}
			}
			r := env.get("/c", req...)
			if r.status != tc.wantCode {
				t.Fatalf("status = %d, want %d", r.status, tc.wantCode)
			}
			expectStatus(t, r, "gatehouse; hit; ttl=100")
			if tc.wantCode == 304 && (r.body != "" || r.header.Get("ETag") != `"v1"`) {
				t.Fatalf("304 with body %q / ETag %q", r.body, r.header.Get("ETag"))
			}
			if env.hits.Load() != 1 {
				t.Fatalf("origin hits = %d, want 1", env.hits.Load())
			}
		})
	}
}

// A conditional request that misses is forwarded without the client's
// validators, so the full response is stored; the cache answers the client.
func TestConditionalMissStoresFullResponse(t *testing.T) {
	t.Parallel()
	sawINM := make(chan string, 4)
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		sawINM <- r.Header.Get("If-None-Match")
		etagOrigin("max-age=100")(w, r)
	})
	r := env.get("/m", "If-None-Match", `"v1"`)
	if r.status != http.StatusNotModified {
		t.Fatalf("status = %d, want 304", r.status)
	}
	expectStatus(t, r, "gatehouse; fwd=uri-miss; fwd-status=200; stored")
	if got := <-sawINM; got != "" {
		t.Fatalf("origin saw If-None-Match %q", got)
	}
	env.waitIdle()
	r = env.get("/m")
	expectStatus(t, r, "gatehouse; hit; ttl=100")
	if r.body != "hello" {
		t.Fatalf("body = %q", r.body)
	}
}
