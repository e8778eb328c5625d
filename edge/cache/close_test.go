package cache

import (
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Close cancels a running background revalidation, waits for it, stops the
// store's clean-up goroutine and is idempotent; afterwards stale hits start
// no new background work. Not parallel: it counts goroutines.
func TestCloseStopsBackgroundGoroutines(t *testing.T) {
	baseline := runtime.NumGoroutine()
	// The real clock, so otter runs its periodic clean-up goroutine too.
	c, err := New(Options{MaxSize: 1 << 20, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{})
	var n atomic.Int32
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Cache-Control", "max-age=0, stale-while-revalidate=600")
			w.Header().Set("ETag", `"a"`)
			_, _ = w.Write([]byte("v1"))
			return
		}
		started <- struct{}{}
		<-r.Context().Done() // a slow origin: only Close ends this
		close(cancelled)
		panic(http.ErrAbortHandler) // what ReverseProxy does when its request is cancelled
	})
	const target = "http://example.com/bg"
	direct(c, next, http.MethodGet, target)
	for range 3 {
		rec := direct(c, next, http.MethodGet, target)
		if cs := rec.Header().Get("Cache-Status"); !strings.HasSuffix(cs, "detail=stale-while-revalidate") || rec.Body.String() != "v1" {
			t.Fatalf("stale hit: %q %q", cs, rec.Body.String())
		}
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("background revalidation never reached next")
	}
	if got := n.Load(); got != 2 {
		t.Fatalf("next called %d times, want 2 (one background refresh)", got)
	}
	if runtime.NumGoroutine() <= baseline {
		t.Fatal("no goroutines to stop?")
	}

	c.Close()
	select {
	case <-cancelled:
	default:
		t.Fatal("Close returned before the background revalidation ended")
	}
	c.Close() // idempotent

	rec := direct(c, next, http.MethodGet, target)
	if cs := rec.Header().Get("Cache-Status"); !strings.Contains(cs, "hit") {
		t.Fatalf("after Close: %q", cs)
	}
	if got := n.Load(); got != 2 {
		t.Fatalf("after Close next called %d times, want 2", got)
	}
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}
