package cache

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
)

const chunk = 32 << 10

// A client that cancels mid-body leaves nothing stored.
func TestNoStoreAfterClientCancel(t *testing.T) {
	t.Parallel()
	for _, withLength := range []bool{true, false} {
		t.Run("content-length="+strconv.FormatBool(withLength), func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if withLength {
					w.Header().Set("Content-Length", strconv.Itoa(4*chunk))
				}
				_, _ = w.Write(bytes.Repeat([]byte("a"), chunk))
				http.NewResponseController(w).Flush()
				if n.Add(1) == 1 {
					<-r.Context().Done() // the first client goes away mid-body
					return
				}
				_, _ = w.Write(bytes.Repeat([]byte("a"), 3*chunk))
			})
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, env.url("/big"), nil)
			resp, err := env.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			env.waitIdle()
			if s := env.cache.Stats(); s.Stored != 0 || s.Entries != 0 {
				t.Fatalf("stats after cancel %+v", s)
			}
			r := env.get("/big")
			expectStatus(t, r, "gatehouse; fwd=uri-miss; stored")
			if len(r.body) != 4*chunk {
				t.Fatalf("body %d bytes", len(r.body))
			}
			env.waitIdle()
			expectStatus(t, env.get("/big"), "gatehouse; hit; ttl=60")
		})
	}
}

// A backend that fails mid-body (the proxy panics with ErrAbortHandler)
// leaves nothing stored, and the client sees the failure.
func TestNoStoreAfterBackendAbort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		withLength bool
	}{
		{"content-length", true},
		{"chunked", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if tc.withLength {
					w.Header().Set("Content-Length", strconv.Itoa(2*chunk))
				}
				_, _ = w.Write(bytes.Repeat([]byte("b"), chunk))
				if n.Add(1) == 1 {
					http.NewResponseController(w).Flush()
					panic(http.ErrAbortHandler) // the backend dies mid-body
				}
				_, _ = w.Write(bytes.Repeat([]byte("b"), chunk))
			})
			if _, err := env.do(http.MethodGet, "/abort"); err == nil {
				t.Fatal("client saw a complete response from an aborted backend")
			}
			env.waitIdle()
			if s := env.cache.Stats(); s.Stored != 0 || s.Entries != 0 {
				t.Fatalf("stats after abort %+v", s)
			}
			r := env.get("/abort")
			expectStatus(t, r, "gatehouse; fwd=uri-miss; stored")
			if len(r.body) != 2*chunk {
				t.Fatalf("body %d bytes", len(r.body))
			}
		})
	}
}

// Above MaxObjectSize the response streams through but is not stored.
func TestLargeObjectNotStored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		withLength bool
		wantCS     string
	}{
		{"declared length", true, "gatehouse; fwd=uri-miss"},
		// Without a length the size is known only at the end: the header
		// says the response was going to be stored when it was sent.
		{"streamed", false, "gatehouse; fwd=uri-miss; stored"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if tc.withLength {
					w.Header().Set("Content-Length", strconv.Itoa(4*chunk))
				}
				for range 4 {
					_, _ = w.Write(bytes.Repeat([]byte("c"), chunk))
					http.NewResponseController(w).Flush()
				}
			}, func(o *Options) { o.MaxObjectSize = 2 * chunk })
			r := env.get("/large")
			expectStatus(t, r, tc.wantCS)
			if len(r.body) != 4*chunk {
				t.Fatalf("client got %d bytes", len(r.body))
			}
			env.waitIdle()
			if s := env.cache.Stats(); s.Stored != 0 || s.Entries != 0 {
				t.Fatalf("stats %+v", s)
			}
			expectPrefix(t, env.get("/large"), "gatehouse; fwd=uri-miss")
			if env.hits.Load() != 2 {
				t.Fatalf("origin hits = %d", env.hits.Load())
			}
		})
	}
}

// A handler that writes less than its Content-Length and returns normally
// (no panic) is still not stored.
func TestShortBodyNotStored(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, newFakeClock())
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Length", "10")
		_, _ = w.Write([]byte("short"))
	})
	direct(c, next, http.MethodGet, "http://example.com/short")
	if s := c.Stats(); s.Stored != 0 || s.Entries != 0 {
		t.Fatalf("stats %+v", s)
	}
}
