package cache

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// counters lets an origin block until the test's requests reach a state:
// calls into next, and requests waiting for a collapsed forward.
type counters struct {
	mu      sync.Mutex
	cond    sync.Cond
	calls   int
	waiting int
	inNext  int // calls running now
	maxIn   int // most calls running at once
}

func newCounters() *counters {
	c := &counters{}
	c.cond.L = &c.mu
	return c
}

func (c *counters) update(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
	c.cond.Broadcast()
}

// until blocks until pred (run under the lock) holds.
func (c *counters) until(pred func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !pred() {
		c.cond.Wait()
	}
}

func (c *counters) get() (calls, waiting, maxIn int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, c.waiting, c.maxIn
}

// serveAsync runs one GET through h in a goroutine; the channel is closed
// when it is done.
func serveAsync(h http.Handler, w http.ResponseWriter, target string) <-chan struct{} {
	done := make(chan struct{})
	req := httptest.NewRequest(http.MethodGet, target, nil)
	go func() {
		defer close(done)
		h.ServeHTTP(w, req)
	}()
	return done
}

// A key whose response was not storable because of what the response says
// is remembered for a while: two concurrent requests for it then both go
// upstream at once instead of one waiting for the other (a slow no-store URL
// or a long poll must not serialise its clients). The origin of the second
// round lets its requests go only when both are inside it, or when one of
// them waits for the other: no timing is involved.
func TestUncacheableKeyIsNotCollapsed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		resp      map[string]string
		status    int
		firstReq  []string      // request fields of the first round
		advance   time.Duration // fake time between the rounds
		wantWait  bool          // the second round collapses
		wantCSTwo string        // Cache-Status of both second-round responses, if not collapsing
	}{
		{name: "no-store", resp: map[string]string{"Cache-Control": "no-store"}, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "private", resp: map[string]string{"Cache-Control": "private, max-age=60"}, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "Set-Cookie", resp: map[string]string{"Cache-Control": "max-age=60", "Set-Cookie": "a=b"}, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "Vary star", resp: map[string]string{"Cache-Control": "max-age=60", "Vary": "*"}, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "no freshness", resp: map[string]string{}, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "remembered for less than 10s", resp: map[string]string{"Cache-Control": "no-store"}, advance: 9 * time.Second, wantCSTwo: "gatehouse; fwd=uri-miss"},
		{name: "forgotten after 10s", resp: map[string]string{"Cache-Control": "no-store"}, advance: 10 * time.Second, wantWait: true},
		{name: "request-only refusal is not remembered", resp: map[string]string{"Cache-Control": "max-age=60"}, firstReq: []string{"Authorization", "Bearer x"}, wantWait: true},
		{name: "server error is not remembered", resp: map[string]string{}, status: http.StatusServiceUnavailable, wantWait: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			c := newTestCache(t, clock)
			cnt := newCounters()
			c.testHookWaiting = func(string) { cnt.update(func() { cnt.waiting++ }) }
			var round2 atomic.Bool
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				cnt.update(func() {
					cnt.calls++
					cnt.inNext++
					cnt.maxIn = max(cnt.maxIn, cnt.inNext)
				})
				defer cnt.update(func() { cnt.inNext-- })
				if round2.Load() {
					// A slow origin: it answers once both requests are in,
					// or once one waits for the other.
					cnt.until(func() bool { return cnt.maxIn >= 2 || cnt.waiting > 0 })
				}
				w.Header().Set("Date", httpDate(clock.Now()))
				for k, v := range tc.resp {
					w.Header().Set(k, v)
				}
				w.WriteHeader(max(tc.status, http.StatusOK))
				_, _ = w.Write([]byte("body"))
			})
			h := c.Handler(next)
			direct(c, next, http.MethodGet, "http://example.com/poll", tc.firstReq...)
			clock.Advance(tc.advance)
			round2.Store(true)
			a := serveAsync(h, httptest.NewRecorder(), "http://example.com/poll")
			b := serveAsync(h, httptest.NewRecorder(), "http://example.com/poll")
			<-a
			<-b
			_, waiting, maxIn := cnt.get()
			if got := waiting > 0; got != tc.wantWait {
				t.Fatalf("a second-round request waited for the other: %v, want %v (most in origin at once: %d)", got, tc.wantWait, maxIn)
			}
			if !tc.wantWait && maxIn != 2 {
				t.Fatalf("most requests in the origin at once = %d, want 2", maxIn)
			}
		})
	}
}

// The Cache-Status of requests for a remembered key is that of a plain
// miss: they did not collapse.
func TestUncacheableKeyCacheStatus(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, newFakeClock())
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("x"))
	})
	for i := range 3 {
		rec := direct(c, next, http.MethodGet, "http://example.com/ns")
		if got := rec.Header().Get("Cache-Status"); got != "gatehouse; fwd=uri-miss" {
			t.Fatalf("request %d: Cache-Status %q", i, got)
		}
	}
	if n := c.pass.len(); n != 1 {
		t.Fatalf("remembered keys = %d, want 1", n)
	}
}

// The remembered keys are bounded.
func TestPassListBounded(t *testing.T) {
	t.Parallel()
	var p passList
	now := time.Now()
	for i := range maxPass + 100 {
		p.add("k"+strconv.Itoa(i), now)
	}
	if n := p.len(); n != maxPass {
		t.Fatalf("len = %d, want %d", n, maxPass)
	}
	if !p.has("k"+strconv.Itoa(maxPass+99), now) {
		t.Fatal("the newest key was not kept")
	}
	if p.has("k"+strconv.Itoa(maxPass+99), now.Add(passTTL)) {
		t.Fatal("a key is remembered past passTTL")
	}
}

// stalledWriter is a client that does not read: writes block until unblock
// is closed.
type stalledWriter struct {
	*httptest.ResponseRecorder
	unblock chan struct{}
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	<-w.unblock
	return w.ResponseRecorder.Write(p)
}

// A leader whose revalidation got a 304, or whose origin failed so that it
// serves stale, releases its waiters at once, not after its own client has
// taken the body: a client that never reads must not hold up the others.
func TestWaitersNotHeldByStalledLeaderClient(t *testing.T) {
	t.Parallel()
	const collapseWait = 5 * time.Second
	tests := []struct {
		name       string
		cc         string                      // of the stored response
		second     func(w http.ResponseWriter) // the revalidation's answer
		wantWaiter string
		wantHits   int
	}{
		{
			name: "304",
			cc:   "max-age=10",
			second: func(w http.ResponseWriter) {
				w.Header().Set("Cache-Control", "max-age=10")
				w.WriteHeader(http.StatusNotModified)
			},
			// Served from the freshened entry.
			wantWaiter: "gatehouse; fwd=stale; ttl=10; collapsed",
			wantHits:   2,
		},
		{
			name: "stale-if-error",
			cc:   "max-age=10, stale-if-error=600",
			second: func(w http.ResponseWriter) {
				http.Error(w, "down", http.StatusBadGateway)
			},
			// Goes upstream itself at once and is answered stale too.
			wantWaiter: "gatehouse; fwd=stale; fwd-status=502; ttl=-10; detail=stale-if-error",
			wantHits:   3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			c := newTestCache(t, clock, func(o *Options) { o.CollapseWait = collapseWait })
			cnt := newCounters()
			c.testHookWaiting = func(string) { cnt.update(func() { cnt.waiting++ }) }
			body := make([]byte, 64<<10)
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var n int
				cnt.update(func() { cnt.calls++; n = cnt.calls })
				w.Header().Set("Date", httpDate(clock.Now()))
				if n == 1 {
					w.Header().Set("Cache-Control", tc.cc)
					w.Header().Set("ETag", `"v1"`)
					_, _ = w.Write(body)
					return
				}
				if n == 2 {
					cnt.until(func() bool { return cnt.waiting > 0 })
				}
				tc.second(w)
			})
			h := c.Handler(next)
			direct(c, next, http.MethodGet, "http://example.com/big")
			clock.Advance(20 * time.Second)

			leaderW := &stalledWriter{ResponseRecorder: httptest.NewRecorder(), unblock: make(chan struct{})}
			leader := serveAsync(h, leaderW, "http://example.com/big")
			cnt.until(func() bool { return cnt.calls == 2 })
			start := time.Now()
			waiter := httptest.NewRecorder()
			<-serveAsync(h, waiter, "http://example.com/big")
			elapsed := time.Since(start)
			close(leaderW.unblock)
			<-leader

			if elapsed > collapseWait/2 {
				t.Fatalf("waiter took %v (CollapseWait %v)", elapsed, collapseWait)
			}
			if got := waiter.Header().Get("Cache-Status"); got != tc.wantWaiter {
				t.Fatalf("waiter Cache-Status %q, want %q", got, tc.wantWaiter)
			}
			if waiter.Code != http.StatusOK || waiter.Body.Len() != len(body) {
				t.Fatalf("waiter got %d, %d bytes", waiter.Code, waiter.Body.Len())
			}
			if leaderW.Code != http.StatusOK || leaderW.Body.Len() != len(body) {
				t.Fatalf("leader got %d, %d bytes", leaderW.Code, leaderW.Body.Len())
			}
			if calls, _, _ := cnt.get(); calls != tc.wantHits {
				t.Fatalf("origin calls = %d, want %d", calls, tc.wantHits)
			}
		})
	}
}

// failingWriter is a client that went away: every write fails.
type failingWriter struct{ *httptest.ResponseRecorder }

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("client gone") }

// When the leader's client goes away mid-body, its waiters do not all go
// upstream at once: one of them leads a new forward and the others wait for
// it and share what it stored.
func TestWaitersCollapseAgainWhenLeaderClientGoes(t *testing.T) {
	t.Parallel()
	const waiters = 3
	c := newTestCache(t, newFakeClock())
	cnt := newCounters()
	c.testHookWaiting = func(string) { cnt.update(func() { cnt.waiting++ }) }
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		cnt.update(func() { cnt.calls++; n = cnt.calls })
		switch n {
		case 1: // the first leader: answers once every waiter waits
			cnt.until(func() bool { return cnt.waiting >= waiters })
		case 2: // the second: once the other waiters wait again (or, without
			// collapsing, once they are upstream themselves)
			cnt.until(func() bool { return cnt.waiting >= 2*waiters-1 || cnt.calls > 2 })
		}
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write([]byte("shared"))
	})
	h := c.Handler(next)
	leader := serveAsync(h, failingWriter{httptest.NewRecorder()}, "http://example.com/gone")
	cnt.until(func() bool { return cnt.calls == 1 })
	recs := make([]*httptest.ResponseRecorder, waiters)
	dones := make([]<-chan struct{}, waiters)
	for i := range recs {
		recs[i] = httptest.NewRecorder()
		dones[i] = serveAsync(h, recs[i], "http://example.com/gone")
	}
	<-leader
	statuses := map[string]int{}
	for i, rec := range recs {
		<-dones[i]
		if rec.Code != http.StatusOK || rec.Body.String() != "shared" {
			t.Fatalf("waiter got %d %q", rec.Code, rec.Body.String())
		}
		statuses[rec.Header().Get("Cache-Status")]++
	}
	if calls, _, _ := cnt.get(); calls != 2 {
		t.Fatalf("origin calls = %d, want 2 (statuses %v)", calls, statuses)
	}
	want := map[string]int{
		"gatehouse; fwd=uri-miss; stored; collapsed=?0": 1,
		"gatehouse; fwd=uri-miss; ttl=60; collapsed":    waiters - 1,
	}
	for s, n := range want {
		if statuses[s] != n {
			t.Fatalf("Cache-Status counts %v, want %v", statuses, want)
		}
	}
}
