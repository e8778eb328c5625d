package cache

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// RFC 9111 §4.3.1, §4.3.3, §4.3.4: revalidation of a stale stored response.
func TestRevalidation(t *testing.T) {
	t.Parallel()
	lastMod := httpDate(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	tests := []struct {
		name string
		// second answers the revalidation; it reports the validators it saw.
		second     func(w http.ResponseWriter, r *http.Request)
		wantCS     string
		wantBody   string
		wantHeader map[string]string
		thenCS     string // Cache-Status 20s later, or "" to skip
		wantReval  uint64
	}{
		{
			name: "304 by ETag freshens and updates headers",
			second: func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("If-None-Match") != `"v1"` {
					http.Error(w, "no validator", 400)
					return
				}
				w.Header().Set("Cache-Control", "max-age=30")
				w.Header().Set("X-Version", "2")
				w.Header().Set("Content-Type", "application/x-wrong")
				w.Header().Set("ETag", `"v1"`)
				w.WriteHeader(http.StatusNotModified)
			},
			wantCS:     "gatehouse; fwd=stale; fwd-status=304; ttl=30; stored",
			wantBody:   "hello v1",
			wantHeader: map[string]string{"X-Version": "2", "Content-Type": "text/plain", "Content-Length": "8"},
			thenCS:     "gatehouse; hit; ttl=10",
			wantReval:  1,
		},
		{
			name: "304 by Last-Modified",
			second: func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("If-Modified-Since") != lastMod {
					http.Error(w, "no validator", 400)
					return
				}
				w.Header().Set("Cache-Control", "max-age=30")
				w.WriteHeader(http.StatusNotModified)
			},
			wantCS:     "gatehouse; fwd=stale; fwd-status=304; ttl=30; stored",
			wantBody:   "hello v1",
			wantHeader: map[string]string{"X-Version": "1"},
			thenCS:     "gatehouse; hit; ttl=10",
			wantReval:  1,
		},
		{
			name: "200 replaces",
			second: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=30")
				w.Header().Set("ETag", `"v2"`)
				w.Header().Set("X-Version", "2")
				_, _ = w.Write([]byte("hello v2"))
			},
			wantCS:     "gatehouse; fwd=stale; stored",
			wantBody:   "hello v2",
			wantHeader: map[string]string{"X-Version": "2", "Etag": `"v2"`},
			thenCS:     "gatehouse; hit; ttl=10",
		},
		{
			name: "304 with no-store is served but not kept",
			second: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "no-store")
				w.WriteHeader(http.StatusNotModified)
			},
			wantCS:    "gatehouse; fwd=stale; fwd-status=304",
			wantBody:  "hello v1",
			thenCS:    "gatehouse; fwd=uri-miss; stored",
			wantReval: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 2 {
					tc.second(w, r)
					return
				}
				w.Header().Set("Cache-Control", "max-age=10")
				w.Header().Set("ETag", `"v1"`)
				w.Header().Set("Last-Modified", lastMod)
				w.Header().Set("X-Version", "1")
				w.Header().Set("Content-Type", "text/plain")
				_, _ = w.Write([]byte("hello v1"))
			})
			env.get("/v")
			env.waitIdle()
			env.clock.Advance(20 * time.Second)
			r := env.get("/v")
			expectStatus(t, r, tc.wantCS)
			if r.status != 200 || r.body != tc.wantBody {
				t.Fatalf("got %d %q, want 200 %q", r.status, r.body, tc.wantBody)
			}
			for k, v := range tc.wantHeader {
				if got := r.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			env.waitIdle()
			if got := env.cache.Stats().Revalidated; got != tc.wantReval {
				t.Errorf("Revalidated = %d, want %d", got, tc.wantReval)
			}
			env.clock.Advance(20 * time.Second)
			r = env.get("/v")
			expectStatus(t, r, tc.thenCS)
			for k, v := range tc.wantHeader {
				if got := r.header.Get(k); got != v && tc.thenCS[:15] == "gatehouse; hit;" {
					t.Errorf("later %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// RFC 9111 §4.1: Vary selects among coexisting variants.
func TestVary(t *testing.T) {
	t.Parallel()
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Encoding, accept-language")
		_, _ = w.Write([]byte("enc=" + r.Header.Get("Accept-Encoding") + " lang=" + r.Header.Get("Accept-Language")))
	})
	steps := []struct {
		hdr      []string
		wantCS   string
		wantBody string
	}{
		{[]string{"Accept-Encoding", "gzip, br"}, "gatehouse; fwd=uri-miss; stored", "enc=gzip, br lang="},
		{[]string{"Accept-Encoding", "identity"}, "gatehouse; fwd=vary-miss; stored", "enc=identity lang="},
		{[]string{"Accept-Encoding", "gzip,br"}, "gatehouse; hit; ttl=60", "enc=gzip, br lang="},
		{[]string{"Accept-Encoding", " gzip ,  br "}, "gatehouse; hit; ttl=60", "enc=gzip, br lang="},
		{[]string{"Accept-Encoding", "gzip", "Accept-Encoding", "br"}, "gatehouse; hit; ttl=60", "enc=gzip, br lang="},
		{[]string{"Accept-Encoding", "identity"}, "gatehouse; hit; ttl=60", "enc=identity lang="},
		{[]string{"Accept-Encoding", "br, gzip"}, "gatehouse; fwd=vary-miss; stored", "enc=br, gzip lang="},
		{[]string{"Accept-Encoding", "identity", "Accept-Language", "de"}, "gatehouse; fwd=vary-miss; stored", "enc=identity lang=de"},
		{[]string{"Accept-Encoding", "identity"}, "gatehouse; hit; ttl=60", "enc=identity lang="},
	}
	for i, s := range steps {
		r := env.get("/v", s.hdr...)
		expectStatus(t, r, s.wantCS)
		if r.body != s.wantBody {
			t.Fatalf("step %d: body %q, want %q", i, r.body, s.wantBody)
		}
		env.waitIdle()
	}
	if got := env.hits.Load(); got != 4 {
		t.Fatalf("origin hits = %d, want 4", got)
	}
	if got := env.cache.Stats().Entries; got != 4 {
		t.Fatalf("Entries = %d, want 4", got)
	}
	if got := env.cache.PurgeURL(env.url("/v")); got != 4 {
		t.Fatalf("PurgeURL removed %d, want 4 variants", got)
	}
	expectStatus(t, env.get("/v", "Accept-Encoding", "identity"), "gatehouse; fwd=uri-miss; stored")
}

func TestNormalisedEqual(t *testing.T) {
	t.Parallel()
	tests := []struct {
		vals []string
		want string
		eq   bool
	}{
		{[]string{"gzip, br"}, "gzip,br", true},
		{[]string{"gzip", "br"}, "gzip,br", true},
		{[]string{" gzip ,, br "}, "gzip,br", true},
		{nil, "", true},
		{[]string{""}, "", true},
		{[]string{"gzip"}, "gzip,br", false},
		{[]string{"gzip, br"}, "gzip", false},
		{[]string{"gzipbr"}, "gzip,br", false},
		{[]string{"br, gzip"}, "gzip,br", false},
	}
	for _, tc := range tests {
		if got := normalisedEqual(tc.vals, tc.want); got != tc.eq {
			t.Errorf("normalisedEqual(%q, %q) = %v", tc.vals, tc.want, got)
		}
		if tc.eq && normaliseValues(tc.vals) != tc.want {
			t.Errorf("normaliseValues(%q) = %q, want %q", tc.vals, normaliseValues(tc.vals), tc.want)
		}
	}
}

// A request with Authorization may revalidate a stored shared response: a
// 304 freshens it in the store (RFC 9111 §4.3.4) whatever the request
// carried; a 200 that may not be stored for this request leaves the stored
// response alone, unless the response itself says no-store.
func TestRevalidationWithAuthorization(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		second   func(w http.ResponseWriter, r *http.Request)
		wantCS   string // of the authenticated request
		thenCS   string // of the next anonymous request
		thenBody string
	}{
		{
			name: "304 freshens",
			second: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=10")
				w.WriteHeader(http.StatusNotModified)
			},
			wantCS:   "gatehouse; fwd=stale; fwd-status=304; ttl=10; stored",
			thenCS:   "gatehouse; hit; ttl=10",
			thenBody: "shared v1",
		},
		{
			name: "200 not storable for this request keeps the entry",
			second: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=10")
				w.Header().Set("ETag", `"v2"`)
				_, _ = w.Write([]byte("for the user"))
			},
			wantCS:   "gatehouse; fwd=stale",
			thenCS:   "gatehouse; fwd=stale; fwd-status=304; ttl=10; stored",
			thenBody: "shared v1",
		},
		{
			name: "200 with no-store removes the entry",
			second: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "no-store")
				_, _ = w.Write([]byte("secret"))
			},
			wantCS:   "gatehouse; fwd=stale",
			thenCS:   "gatehouse; fwd=uri-miss; stored",
			thenBody: "shared v1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				switch n.Add(1) {
				case 2:
					tc.second(w, r)
					return
				case 3:
					if r.Header.Get("If-None-Match") == `"v1"` {
						w.Header().Set("Cache-Control", "max-age=10")
						w.WriteHeader(http.StatusNotModified)
						return
					}
				}
				w.Header().Set("Cache-Control", "max-age=10")
				w.Header().Set("ETag", `"v1"`)
				_, _ = w.Write([]byte("shared v1"))
			})
			env.get("/p")
			env.waitIdle()
			env.clock.Advance(20 * time.Second)
			expectStatus(t, env.get("/p", "Authorization", "Bearer secret"), tc.wantCS)
			env.waitIdle()
			r := env.get("/p")
			expectStatus(t, r, tc.thenCS)
			if r.body != tc.thenBody {
				t.Fatalf("anonymous body %q, want %q", r.body, tc.thenBody)
			}
		})
	}
}
