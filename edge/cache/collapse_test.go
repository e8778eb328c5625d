package cache

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// collapseRig is a cache in front of a real origin whose first request
// blocks until `waiters` requests are waiting for it (a barrier, no sleeps).
type collapseRig struct {
	cache   *Cache
	handler http.Handler
	hits    atomic.Int64
}

func newCollapseRig(t *testing.T, waiters int64, opts func(*Options), origin func(first bool, w http.ResponseWriter, r *http.Request)) *collapseRig {
	t.Helper()
	rig := &collapseRig{}
	allWaiting := make(chan struct{})
	var waiting atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := rig.hits.Add(1) == 1
		if first && waiters > 0 {
			select {
			case <-allWaiting:
			case <-r.Context().Done():
				return
			}
		}
		origin(first, w, r)
	}))
	tr := &http.Transport{MaxIdleConnsPerHost: 200}
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	rig.cache = newTestCache(t, newFakeClock(), func(o *Options) {
		if opts != nil {
			opts(o)
		}
	})
	rig.cache.testHookWaiting = func(string) {
		if waiting.Add(1) == waiters {
			close(allWaiting)
		}
	}
	rig.handler = rig.cache.Handler(newProxy(srv.URL, tr))
	return rig
}

// run sends n concurrent GETs and returns the recorders.
func (rig *collapseRig) run(n int, target string) []*httptest.ResponseRecorder {
	recs := make([]*httptest.ResponseRecorder, n)
	var wg sync.WaitGroup
	for i := range recs {
		recs[i] = httptest.NewRecorder()
		wg.Go(func() {
			rig.handler.ServeHTTP(recs[i], httptest.NewRequest(http.MethodGet, target, nil))
		})
	}
	wg.Wait()
	return recs
}

// Concurrent misses for one key send one request upstream; the others wait
// and share the stored response.
func TestCollapsedForwarding(t *testing.T) {
	t.Parallel()
	const n = 100
	rig := newCollapseRig(t, n-1, nil, func(_ bool, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Date", httpDate(time.Now()))
		_, _ = w.Write([]byte("shared"))
	})
	recs := rig.run(n, "http://example.com/hot")
	statuses := map[string]int{}
	for _, rec := range recs {
		if rec.Code != 200 || rec.Body.String() != "shared" {
			t.Fatalf("response %d %q", rec.Code, rec.Body.String())
		}
		statuses[rec.Header().Get("Cache-Status")]++
	}
	if got := rig.hits.Load(); got != 1 {
		t.Fatalf("origin hits = %d, want 1", got)
	}
	if statuses["gatehouse; fwd=uri-miss; stored"] != 1 {
		t.Fatalf("Cache-Status counts %v: want one leader", statuses)
	}
	// The waiters' ttl depends on the real Date; only count the prefix.
	collapsed := 0
	for s, k := range statuses {
		if len(s) > 30 && s[:24] == "gatehouse; fwd=uri-miss;" && s[len(s)-11:] == "; collapsed" {
			collapsed += k
		}
	}
	if collapsed != n-1 {
		t.Fatalf("Cache-Status counts %v: want %d collapsed", statuses, n-1)
	}
	s := rig.cache.Stats()
	if s.Misses != 1 || s.Collapsed != n-1 || s.Hits != n-1 || s.Stored != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// When the leader's response is not storable the waiters are released at
// its headers and go upstream themselves.
func TestCollapsedUncacheable(t *testing.T) {
	t.Parallel()
	const n = 5
	rig := newCollapseRig(t, n-1, nil, func(_ bool, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("private"))
	})
	recs := rig.run(n, "http://example.com/nostore")
	statuses := map[string]int{}
	for _, rec := range recs {
		statuses[rec.Header().Get("Cache-Status")]++
	}
	if got := rig.hits.Load(); got != n {
		t.Fatalf("origin hits = %d, want %d", got, n)
	}
	if statuses["gatehouse; fwd=uri-miss"] != 1 || statuses["gatehouse; fwd=uri-miss; collapsed=?0"] != n-1 {
		t.Fatalf("Cache-Status counts %v", statuses)
	}
}

// A waiter gives up after CollapseWait and forwards on its own.
func TestCollapseWaitExpires(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rig := newCollapseRig(t, 0, func(o *Options) { o.CollapseWait = 20 * time.Millisecond },
		func(first bool, w http.ResponseWriter, r *http.Request) {
			if first {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			w.Header().Set("Cache-Control", "max-age=60")
			_, _ = w.Write([]byte("x"))
		})
	leaderDone := make(chan *httptest.ResponseRecorder)
	go func() {
		rec := httptest.NewRecorder()
		rig.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://example.com/slow", nil))
		leaderDone <- rec
	}()
	waitFor(t, "leader to reach the origin", func() bool { return rig.hits.Load() == 1 })
	rec := httptest.NewRecorder()
	rig.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://example.com/slow", nil))
	if got := rec.Header().Get("Cache-Status"); got != "gatehouse; fwd=uri-miss; stored; collapsed=?0" {
		t.Fatalf("waiter Cache-Status = %q", got)
	}
	close(release)
	if got := (<-leaderDone).Header().Get("Cache-Status"); got != "gatehouse; fwd=uri-miss; stored" {
		t.Fatalf("leader Cache-Status = %q", got)
	}
	if rig.hits.Load() != 2 {
		t.Fatalf("origin hits = %d, want 2", rig.hits.Load())
	}
}

// The leader's client receives the body as the origin sends it, before the
// origin has finished.
func TestLeaderStreamsLive(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = io.WriteString(w, "first line\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second line\n")
	})
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, env.url("/stream"), nil)
	resp, err := env.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first line\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "second line\n" {
		t.Fatalf("rest %q", rest)
	}
	env.waitIdle()
	r := env.get("/stream")
	expectStatus(t, r, "gatehouse; hit; ttl=60")
	if r.body != "first line\nsecond line\n" {
		t.Fatalf("stored body %q", r.body)
	}
}
