package cache

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// Bodies being received for storing are bounded cache-wide by MaxBuffering:
// of two concurrent large misses only what fits is buffered and stored, the
// other streams through, and the gauge returns to 0. The handlers are
// stepped by the test, so the order of their writes is fixed.
func TestMaxBuffering(t *testing.T) {
	t.Parallel()
	const chunk = 60 << 10
	tests := []struct {
		name string
		// bLength: B declares its Content-Length.
		bLength bool
		// afterFirst is Stats().Buffering once A and B wrote their first chunk.
		afterFirst int64
		wantStored string // "a" or "b"
		wantCSA    string
		wantCSB    string
	}{
		{
			// A's second chunk would exceed the limit: A stops buffering
			// (its header already said stored), which leaves room for B.
			name:       "streamed",
			afterFirst: 2 * chunk,
			wantStored: "b",
			wantCSA:    "gatehouse; fwd=uri-miss; stored",
			wantCSB:    "gatehouse; fwd=uri-miss; stored",
		},
		{
			// B's declared length does not fit next to A's buffer: B is
			// not stored, and its header says so.
			name:       "declared length",
			bLength:    true,
			afterFirst: chunk,
			wantStored: "a",
			wantCSA:    "gatehouse; fwd=uri-miss; stored",
			wantCSB:    "gatehouse; fwd=uri-miss",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newTestCache(t, newFakeClock(), func(o *Options) { o.MaxBuffering = 150 << 10 })
			body := bytes.Repeat([]byte("b"), chunk)
			type step struct{ wrote, resume chan struct{} }
			steps := map[string]step{
				"/a": {make(chan struct{}), make(chan struct{})},
				"/b": {make(chan struct{}), make(chan struct{})},
			}
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if r.URL.Path == "/b" && tc.bLength {
					w.Header().Set("Content-Length", strconv.Itoa(2*chunk))
				}
				s := steps[r.URL.Path]
				_, _ = w.Write(body)
				close(s.wrote)
				<-s.resume
				_, _ = w.Write(body)
			})
			h := c.Handler(next)
			recA, recB := httptest.NewRecorder(), httptest.NewRecorder()
			doneA := serveAsync(h, recA, "http://example.com/a")
			<-steps["/a"].wrote
			doneB := serveAsync(h, recB, "http://example.com/b")
			<-steps["/b"].wrote
			if got := c.Stats().Buffering; got != tc.afterFirst {
				t.Fatalf("Buffering after the first chunks = %d, want %d", got, tc.afterFirst)
			}
			close(steps["/a"].resume)
			<-doneA
			close(steps["/b"].resume)
			<-doneB

			for _, x := range []struct {
				name   string
				rec    *httptest.ResponseRecorder
				wantCS string
			}{{"a", recA, tc.wantCSA}, {"b", recB, tc.wantCSB}} {
				if x.rec.Code != http.StatusOK || x.rec.Body.Len() != 2*chunk {
					t.Fatalf("%s: %d, %d bytes", x.name, x.rec.Code, x.rec.Body.Len())
				}
				if got := x.rec.Header().Get("Cache-Status"); got != x.wantCS {
					t.Fatalf("%s: Cache-Status %q, want %q", x.name, got, x.wantCS)
				}
				_, stored := c.store.get("http://example.com/" + x.name)
				if want := x.name == tc.wantStored; stored != want {
					t.Fatalf("%s stored: %v, want %v", x.name, stored, want)
				}
			}
			if s := c.Stats(); s.Stored != 1 || s.Buffering != 0 {
				t.Fatalf("Stored = %d, Buffering = %d; want 1, 0", s.Stored, s.Buffering)
			}
		})
	}
}

// The reservation is returned however a response ends: stored, too large,
// cut short by the client or a panic, in the foreground or background.
func TestBufferingReleased(t *testing.T) {
	t.Parallel()
	body := bytes.Repeat([]byte("x"), 8<<10)
	tests := []struct {
		name string
		w    func() http.ResponseWriter
		next http.HandlerFunc
	}{
		{"stored", func() http.ResponseWriter { return httptest.NewRecorder() }, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			_, _ = w.Write(body)
		}},
		{"too large", func() http.ResponseWriter { return httptest.NewRecorder() }, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			for range 10 {
				_, _ = w.Write(body)
			}
		}},
		{"client gone", func() http.ResponseWriter { return failingWriter{httptest.NewRecorder()} }, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			_, _ = w.Write(body)
		}},
		{"short body", func() http.ResponseWriter { return httptest.NewRecorder() }, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Content-Length", strconv.Itoa(2*len(body)))
			_, _ = w.Write(body)
		}},
		{"panic", func() http.ResponseWriter { return httptest.NewRecorder() }, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			_, _ = w.Write(body)
			panic(http.ErrAbortHandler)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newTestCache(t, newFakeClock(), func(o *Options) { o.MaxObjectSize = 64 << 10 })
			func() {
				defer func() { _ = recover() }()
				c.Handler(tc.next).ServeHTTP(tc.w(), httptest.NewRequest(http.MethodGet, "http://example.com/r", nil))
			}()
			if got := c.Stats().Buffering; got != 0 {
				t.Fatalf("Buffering = %d, want 0", got)
			}
		})
	}
}

// A background revalidation that panics mid-body returns its reservation.
func TestBufferingReleasedInBackground(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newTestCache(t, clock)
	bgDone := make(chan struct{})
	first := true
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=60")
		w.Header().Set("Date", httpDate(clock.Now()))
		_, _ = w.Write([]byte("body"))
		if first {
			first = false
			return
		}
		defer close(bgDone)
		panic("origin bug")
	})
	direct(c, next, http.MethodGet, "http://example.com/bg")
	clock.Advance(5 * time.Second)
	rec := direct(c, next, http.MethodGet, "http://example.com/bg")
	if got := rec.Header().Get("Cache-Status"); got != "gatehouse; hit; ttl=-4; detail=stale-while-revalidate" {
		t.Fatalf("Cache-Status %q", got)
	}
	<-bgDone
	c.Close() // waits for the background revalidation
	if got := c.Stats().Buffering; got != 0 {
		t.Fatalf("Buffering = %d, want 0", got)
	}
}

func TestMaxBufferingOption(t *testing.T) {
	t.Parallel()
	tests := []struct {
		opts Options
		want int64
		err  bool
	}{
		{opts: Options{MaxSize: 1 << 20}, want: 256 << 10},
		{opts: Options{MaxSize: 8 << 30}, want: 512 << 20},
		{opts: Options{MaxSize: 1 << 20, MaxBuffering: 1000}, want: 1000},
		{opts: Options{MaxSize: 1 << 20, MaxBuffering: -1}, err: true},
	}
	for _, tc := range tests {
		tc.opts.Logger = quietLogger
		c, err := New(tc.opts)
		if tc.err {
			if err == nil {
				t.Errorf("New(%+v) accepted", tc.opts)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if c.maxBuffering != tc.want {
			t.Errorf("New(%+v): maxBuffering = %d, want %d", tc.opts, c.maxBuffering, tc.want)
		}
	}
}

// The buffer is not allocated up front from a declared Content-Length
// beyond initialBuffer: it grows as the body arrives.
func TestBufferGrowsAsDataArrives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		length  int
		wantCap int
	}{
		{length: 10, wantCap: 10},
		{length: initialBuffer, wantCap: initialBuffer},
		{length: 32 << 20, wantCap: initialBuffer},
	}
	for _, tc := range tests {
		c := newTestCache(t, nil, func(o *Options) { o.MaxSize = 256 << 20 })
		gotCap := -1
		next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Content-Length", strconv.Itoa(tc.length))
			w.WriteHeader(http.StatusOK)
			if cw, ok := w.(*captureWriter); ok && cw.pending != nil {
				gotCap = cap(cw.buf)
			}
		})
		direct(c, next, http.MethodGet, "http://example.com/big")
		if gotCap != tc.wantCap {
			t.Errorf("Content-Length %d: buffer capacity %d, want %d", tc.length, gotCap, tc.wantCap)
		}
	}
}
