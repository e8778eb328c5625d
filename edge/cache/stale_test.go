package cache

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RFC 5861 §3: stale-while-revalidate serves stale and refreshes in the
// background exactly once, however many stale hits arrive meanwhile.
func TestStaleWhileRevalidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		answer304 bool
		wantBody  string
		wantReval uint64
	}{
		{"refresh with 200", false, "v2", 0},
		{"refresh with 304", true, "v1", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			bgStarted := make(chan string, 10)
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=10, stale-while-revalidate=100")
				if n.Add(1) == 1 {
					w.Header().Set("ETag", `"v1"`)
					_, _ = w.Write([]byte("v1"))
					return
				}
				bgStarted <- r.Header.Get("If-None-Match")
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				if tc.answer304 {
					w.WriteHeader(http.StatusNotModified)
					return
				}
				w.Header().Set("ETag", `"v2"`)
				_, _ = w.Write([]byte("v2"))
			})
			env.get("/swr")
			env.waitIdle()
			env.clock.Advance(20 * time.Second)

			const clients = 50
			var wg sync.WaitGroup
			errs := make(chan string, clients)
			for range clients {
				wg.Go(func() {
					r, err := env.do(http.MethodGet, "/swr")
					switch {
					case err != nil:
						errs <- err.Error()
					case r.body != "v1" || r.cacheStatus() != "gatehouse; hit; ttl=-10; detail=stale-while-revalidate":
						errs <- r.body + " / " + r.cacheStatus()
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Fatalf("stale hit: %s", e)
			}
			if inm := <-bgStarted; inm != `"v1"` {
				t.Fatalf("background revalidation sent If-None-Match %q", inm)
			}
			if got := env.hits.Load(); got != 2 {
				t.Fatalf("origin hits = %d, want 2 (one background refresh)", got)
			}
			close(release)
			waitFor(t, "background refresh to be stored", func() bool {
				s := env.cache.Stats()
				return s.Stored+s.Revalidated == 2
			})
			r := env.get("/swr")
			expectStatus(t, r, "gatehouse; hit; ttl=10")
			if r.body != tc.wantBody {
				t.Fatalf("body after refresh = %q, want %q", r.body, tc.wantBody)
			}
			s := env.cache.Stats()
			if s.Revalidated != tc.wantReval || s.StaleServed != clients || env.hits.Load() != 2 {
				t.Fatalf("stats %+v, origin hits %d", s, env.hits.Load())
			}
		})
	}
}

// RFC 5861 §4: stale-if-error answers with the stale response when the
// origin fails (5xx, or unreachable so the proxy answers 502).
func TestStaleIfError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		respCC     string
		age        time.Duration
		req        []string
		failStatus int  // what the origin answers the second time
		stopOrigin bool // close the origin instead
		wantCode   int
		wantCS     string
	}{
		{name: "500", respCC: "max-age=10, stale-if-error=60", age: 20 * time.Second, failStatus: 500,
			wantCode: 200, wantCS: "gatehouse; fwd=stale; fwd-status=500; ttl=-10; detail=stale-if-error"},
		{name: "503", respCC: "max-age=10, stale-if-error=60", age: 20 * time.Second, failStatus: 503,
			wantCode: 200, wantCS: "gatehouse; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error"},
		{name: "origin stopped", respCC: "max-age=10, stale-if-error=60", age: 20 * time.Second, stopOrigin: true,
			wantCode: 200, wantCS: "gatehouse; fwd=stale; fwd-status=502; ttl=-10; detail=stale-if-error"},
		{name: "request stale-if-error", respCC: "max-age=10", age: 20 * time.Second, req: []string{"Cache-Control", "stale-if-error=30"}, failStatus: 500,
			wantCode: 200, wantCS: "gatehouse; fwd=stale; fwd-status=500; ttl=-10; detail=stale-if-error"},
		{name: "outside the window", respCC: "max-age=10, stale-if-error=60", age: 100 * time.Second, failStatus: 500,
			wantCode: 500, wantCS: "gatehouse; fwd=stale"},
		{name: "must-revalidate forbids", respCC: "max-age=10, must-revalidate, stale-if-error=60", age: 20 * time.Second, failStatus: 500,
			wantCode: 500, wantCS: "gatehouse; fwd=stale"},
		{name: "404 is not an error", respCC: "max-age=10, stale-if-error=60", age: 20 * time.Second, failStatus: 404,
			wantCode: 404, wantCS: "gatehouse; fwd=stale"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) > 1 {
					http.Error(w, "broken", tc.failStatus)
					return
				}
				w.Header().Set("Cache-Control", tc.respCC)
				w.Header().Set("ETag", `"v1"`)
				_, _ = w.Write([]byte("good"))
			})
			env.get("/e")
			env.waitIdle()
			if tc.stopOrigin {
				env.origin.Close()
			}
			env.clock.Advance(tc.age)
			r := env.get("/e", tc.req...)
			expectStatus(t, r, tc.wantCS)
			if r.status != tc.wantCode {
				t.Fatalf("status = %d, want %d", r.status, tc.wantCode)
			}
			if tc.wantCode == 200 && r.body != "good" {
				t.Fatalf("body = %q, want the stale one", r.body)
			}
		})
	}
}

// stale-if-error also covers a handler that fails before sending headers
// (panic with http.ErrAbortHandler); without it the panic propagates.
func TestStaleIfErrorOnAbort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		respCC    string
		wantPanic bool
	}{
		{"rescued", "max-age=10, stale-if-error=60", false},
		{"propagated", "max-age=10", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			c := newTestCache(t, clock)
			var n atomic.Int32
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) > 1 {
					panic(http.ErrAbortHandler)
				}
				w.Header().Set("Cache-Control", tc.respCC)
				w.Header().Set("ETag", `"v1"`)
				_, _ = w.Write([]byte("good"))
			})
			direct(c, next, http.MethodGet, "http://example.com/p")
			clock.Advance(20 * time.Second)
			var rec interface{ Header() http.Header }
			panicked := func() (p bool) {
				defer func() { p = recover() != nil }()
				rec = direct(c, next, http.MethodGet, "http://example.com/p")
				return false
			}()
			if panicked != tc.wantPanic {
				t.Fatalf("panicked = %v, want %v", panicked, tc.wantPanic)
			}
			if !tc.wantPanic {
				if got := rec.Header().Get("Cache-Status"); got != "gatehouse; fwd=stale; ttl=-10; detail=stale-if-error" {
					t.Fatalf("Cache-Status = %q", got)
				}
			}
		})
	}
}
