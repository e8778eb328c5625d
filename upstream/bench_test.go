package upstream

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkProxy forwards a small GET to a local backend; it measures the
// proxy's per-request cost including one loopback round trip.
func BenchmarkProxy(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	}))
	b.Cleanup(backend.Close)
	h := NewProxy(newTestPool(b, nil, backend.URL), quietOptions())
	req := httptest.NewRequest(http.MethodGet, "/bench?x=1", nil)
	req.Header.Set("User-Agent", "bench")
	req.Header.Set("Accept", "*/*")

	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
	}
}
