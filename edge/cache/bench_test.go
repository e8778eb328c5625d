package cache

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// benchWriter is a minimal ResponseWriter; its header map is reused so the
// benchmark measures the cache, not map allocation by a server.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header  { return w.h }
func (w *benchWriter) WriteHeader(code int) { w.status = code }
func (w *benchWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	return len(p), nil
}

func benchCache(b *testing.B) (http.Handler, *http.Request) {
	c, err := New(Options{MaxSize: 64 << 20, Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	h := c.Handler(bodyHandler(1024))
	req := httptest.NewRequest(http.MethodGet, "http://example.com/static/app.css", nil)
	req.Header.Set("Accept-Encoding", "gzip, br")
	h.ServeHTTP(httptest.NewRecorder(), req)
	return h, req
}

func serveHit(b *testing.B, h http.Handler, req *http.Request, w *benchWriter) {
	clear(w.h)
	w.n = 0
	h.ServeHTTP(w, req)
	if w.status != http.StatusOK || w.n != 1024 {
		b.Fatalf("status %d, %d bytes", w.status, w.n)
	}
}

// BenchmarkHit measures a fresh hit: key, lookup, freshness, headers, body.
func BenchmarkHit(b *testing.B) {
	h, req := benchCache(b)
	w := &benchWriter{h: make(http.Header)}
	serveHit(b, h, req, w)
	if cs := w.h.Get("Cache-Status"); cs[:15] != "gatehouse; hit;" {
		b.Fatalf("not a hit: %q", cs)
	}
	b.ReportAllocs()
	for b.Loop() {
		serveHit(b, h, req, w)
	}
}

func BenchmarkHitParallel(b *testing.B) {
	h, req := benchCache(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &benchWriter{h: make(http.Header)}
		for pb.Next() {
			serveHit(b, h, req, w)
		}
	})
}
