package cache

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// RFC 9111 §3 and §3.5: which responses a shared cache stores. Each case
// sends the same request twice; a stored response makes the second a hit.
func TestStorage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		resp    map[string]string // response fields ("Expires" values are offsets like "+60s")
		req     []string          // request fields, name/value pairs
		stored  bool
		wantCS1 string // Cache-Status of the first response, if checked
	}{
		{name: "max-age", resp: map[string]string{"Cache-Control": "max-age=60"}, stored: true, wantCS1: "gatehouse; fwd=uri-miss; stored"},
		{name: "s-maxage wins over max-age=0", resp: map[string]string{"Cache-Control": "max-age=0, s-maxage=60"}, stored: true},
		{name: "s-maxage=0 wins over max-age", resp: map[string]string{"Cache-Control": "max-age=60, s-maxage=0"}, stored: false},
		{name: "Expires", resp: map[string]string{"Expires": "+60s"}, stored: true},
		{name: "invalid Expires", resp: map[string]string{"Expires": "0"}, stored: false},
		{name: "no-store", resp: map[string]string{"Cache-Control": "max-age=60, no-store"}, stored: false, wantCS1: "gatehouse; fwd=uri-miss"},
		{name: "private", resp: map[string]string{"Cache-Control": "private, max-age=60"}, stored: false},
		{name: "qualified private", resp: map[string]string{"Cache-Control": `private="X-User", max-age=60`}, stored: false},
		{name: "must-understand lifts no-store", resp: map[string]string{"Cache-Control": "must-understand, no-store, max-age=60"}, stored: true},
		{name: "Authorization: not stored", resp: map[string]string{"Cache-Control": "max-age=60"}, req: []string{"Authorization", "Bearer x"}, stored: false},
		{name: "Authorization with public", resp: map[string]string{"Cache-Control": "public, max-age=60"}, req: []string{"Authorization", "Bearer x"}, stored: true},
		{name: "Authorization with s-maxage", resp: map[string]string{"Cache-Control": "s-maxage=60"}, req: []string{"Authorization", "Bearer x"}, stored: true},
		{name: "Authorization with must-revalidate", resp: map[string]string{"Cache-Control": "must-revalidate, max-age=60"}, req: []string{"Authorization", "Bearer x"}, stored: true},
		{name: "Set-Cookie is not stored", resp: map[string]string{"Cache-Control": "public, max-age=60", "Set-Cookie": "a=b"}, stored: false},
		{name: "Vary: * is not stored", resp: map[string]string{"Cache-Control": "max-age=60", "Vary": "*"}, stored: false},
		{name: "request no-store", resp: map[string]string{"Cache-Control": "max-age=60"}, req: []string{"Cache-Control", "no-store"}, stored: false},
		{name: "invalid max-age without validator", resp: map[string]string{"Cache-Control": "max-age=soon"}, stored: false},
		{name: "duplicate max-age: first wins", resp: map[string]string{"Cache-Control": "max-age=60, max-age=0"}, stored: true},
		{name: "quoted max-age", resp: map[string]string{"Cache-Control": `max-age="60"`}, stored: true},
		{name: "upper-case directive", resp: map[string]string{"Cache-Control": "MAX-AGE=60"}, stored: true},
		{name: "302 without freshness", status: 302, resp: map[string]string{"Location": "/x"}, stored: false},
		{name: "302 with max-age", status: 302, resp: map[string]string{"Location": "/x", "Cache-Control": "max-age=60"}, stored: true},
		{name: "unknown status", status: 299, resp: map[string]string{"Cache-Control": "max-age=60"}, stored: false},
		{name: "no freshness, no validator", resp: map[string]string{}, stored: false},
		{name: "no-cache without validator", resp: map[string]string{"Cache-Control": "no-cache, max-age=60"}, stored: false},
		{name: "announced trailer", resp: map[string]string{"Cache-Control": "max-age=60", "Trailer": "X-Sum"}, stored: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var env *testEnv
			env = newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.resp {
					if k == "Expires" && strings.HasPrefix(v, "+") {
						d, _ := time.ParseDuration(v[1:])
						v = httpDate(env.clock.Now().Add(d))
					}
					w.Header().Set(k, v)
				}
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				_, _ = w.Write([]byte("body"))
			})
			r1 := env.get("/s", tc.req...)
			if tc.wantCS1 != "" {
				expectStatus(t, r1, tc.wantCS1)
			}
			env.waitIdle()
			r2 := env.get("/s", tc.req...)
			hit := strings.HasPrefix(r2.cacheStatus(), "gatehouse; hit")
			if hit != tc.stored {
				t.Fatalf("second response Cache-Status %q, stored = %v, want %v", r2.cacheStatus(), hit, tc.stored)
			}
			wantHits := int64(2)
			if tc.stored {
				wantHits = 1
			}
			if got := env.hits.Load(); got != wantHits {
				t.Fatalf("origin hits = %d, want %d", got, wantHits)
			}
			if tc.stored && r2.body != r1.body {
				t.Fatalf("hit body %q, want %q", r2.body, r1.body)
			}
		})
	}
}

// RFC 9111 §3.1: hop-by-hop fields, fields named in Connection and
// Cache-Status are not stored; Date is added when missing.
func TestStoredHeaderFields(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, newFakeClock())
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "max-age=60")
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Cache-Status", "upstream; hit")
		h.Set("X-Kept", "yes")
		h["Date"] = nil
		_, _ = w.Write([]byte("abc"))
	})
	first := direct(c, next, http.MethodGet, "http://example.com/h")
	if got := first.Header().Values("Cache-Status"); len(got) != 2 || got[0] != "upstream; hit" || got[1] != "gatehouse; fwd=uri-miss; stored" {
		t.Fatalf("miss Cache-Status = %q, want the origin's then ours", got)
	}
	rec := direct(c, next, http.MethodGet, "http://example.com/h")
	h := rec.Header()
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive"} {
		if v := h.Get(k); v != "" {
			t.Errorf("%s = %q served from the store", k, v)
		}
	}
	if got := h.Values("Cache-Status"); len(got) != 1 || got[0] != "gatehouse; hit; ttl=60" {
		t.Errorf("Cache-Status = %q", got)
	}
	if h.Get("X-Kept") != "yes" || h.Get("Date") == "" || h.Get("Content-Length") != "3" {
		t.Errorf("stored header lost fields: %v", h)
	}
}
