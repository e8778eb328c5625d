package upstream

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func capped(maxConns int, queue time.Duration, balance string) func(*config.Upstream) {
	return func(u *config.Upstream) {
		u.Balance = balance
		u.Timeouts.Queue = config.Duration(queue)
		for _, b := range u.Backends {
			b.MaxConns = maxConns
		}
	}
}

// blockOne starts a request that sits at tb (mode block) and returns a
// channel with its status once it ends.
func blockOne(t *testing.T, c *http.Client, url string, tb *testBackend) <-chan int {
	t.Helper()
	done := make(chan int, 1)
	go func() {
		code, _, _, err := fetch(c, url)
		if err != nil {
			t.Errorf("blocked request: %v", err)
		}
		done <- code
	}()
	select {
	case <-tb.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the slow backend")
	}
	return done
}

// TestMaxConnsOverflow: with the first backend at max_conns, the next
// request goes to a backend with room.
func TestMaxConnsOverflow(t *testing.T) {
	t.Parallel()
	slow, other := newTestBackend(t, "slow"), newTestBackend(t, "other")
	slow.mode.Store(modeBlock)
	pool := newTestPool(t, capped(1, 5*time.Second, "first"), slow.URL, other.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	first := blockOne(t, front.Client(), front.URL+"/", slow)
	if code, body, _ := get(t, front.Client(), front.URL+"/"); code != http.StatusOK || body != "other" {
		t.Fatalf("second request: %d %q, want the other backend", code, body)
	}
	if st := pool.Status().Backends[0]; st.Inflight != 1 || st.MaxConns != 1 {
		t.Errorf("status %+v", st)
	}
	slow.unblock()
	if code := <-first; code != http.StatusOK {
		t.Errorf("first request: %d", code)
	}
	if slow.maxConc.Load() != 1 {
		t.Errorf("slow backend served %d at once", slow.maxConc.Load())
	}
	waitInflightZero(t, pool)
}

// TestMaxConnsQueueTimeout: with the only backend full, a request waits
// for the queue timeout and gets 503 with Retry-After.
func TestMaxConnsQueueTimeout(t *testing.T) {
	t.Parallel()
	slow := newTestBackend(t, "slow")
	slow.mode.Store(modeBlock)
	pool := newTestPool(t, capped(1, 100*time.Millisecond, "round_robin"), slow.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	first := blockOne(t, front.Client(), front.URL+"/", slow)
	code, body, h := get(t, front.Client(), front.URL+"/")
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") != "1" || body != "503 Service Unavailable\n" {
		t.Fatalf("got %d %q Retry-After %q; want 503 with Retry-After", code, body, h.Get("Retry-After"))
	}
	noAddress(t, body, pool)
	if n := slow.hits.Load(); n != 1 {
		t.Errorf("backend got %d requests, want 1", n)
	}
	slow.unblock()
	if code := <-first; code != http.StatusOK {
		t.Errorf("first request: %d", code)
	}
	waitInflightZero(t, pool)
	if n := pool.slots.waiters.Load(); n != 0 {
		t.Errorf("%d waiters left", n)
	}
}

// TestMaxConnsQueueWaits: a queued request gets the slot when it frees up.
func TestMaxConnsQueueWaits(t *testing.T) {
	t.Parallel()
	slow := newTestBackend(t, "slow")
	slow.mode.Store(modeBlock)
	pool := newTestPool(t, capped(1, time.Minute, "least_conn"), slow.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	first := blockOne(t, front.Client(), front.URL+"/", slow)
	second := make(chan int, 1)
	go func() {
		code, _, _, _ := fetch(front.Client(), front.URL+"/")
		second <- code
	}()
	waitFor(t, 10*time.Second, "the second request to queue", func() bool { return pool.slots.waiters.Load() == 1 })
	slow.unblock()
	if a, b := <-first, <-second; a != http.StatusOK || b != http.StatusOK {
		t.Fatalf("statuses %d and %d", a, b)
	}
	if slow.hits.Load() != 2 || slow.maxConc.Load() != 1 {
		t.Errorf("backend got %d requests, %d at once", slow.hits.Load(), slow.maxConc.Load())
	}
	waitInflightZero(t, pool)
}

// TestMaxConnsUnderLoad: many concurrent requests on capped backends all
// get through the queue, no backend ever exceeds its cap, and the counts
// end at zero.
func TestMaxConnsUnderLoad(t *testing.T) {
	t.Parallel()
	for _, balance := range allPolicies {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			a, b := newTestBackend(t, "a"), newTestBackend(t, "b")
			a.mode.Store(modeSlow)
			b.mode.Store(modeSlow)
			pool := newTestPool(t, func(u *config.Upstream) {
				withBalance(balance)(u)
				capped(2, time.Minute, balance)(u)
			}, a.URL, b.URL)
			front := serveProxy(t, NewProxy(pool, quietOptions()))
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Go(func() {
					code, _, _, err := fetch(front.Client(), front.URL+"/", "X-User", "u"+string(rune('a'+i%5)))
					if err != nil || code != http.StatusOK {
						t.Errorf("request: %d %v", code, err)
					}
				})
			}
			wg.Wait()
			if a.maxConc.Load() > 2 || b.maxConc.Load() > 2 {
				t.Errorf("served at once: a %d, b %d; cap 2", a.maxConc.Load(), b.maxConc.Load())
			}
			if a.maxConc.Load() < 2 && b.maxConc.Load() < 2 {
				t.Logf("the cap was never reached (a %d, b %d at once)", a.maxConc.Load(), b.maxConc.Load())
			}
			if a.hits.Load()+b.hits.Load() != 40 {
				t.Errorf("%d requests served", a.hits.Load()+b.hits.Load())
			}
			waitInflightZero(t, pool)
		})
	}
}

// TestInflightExact: under failures, retries, client cancellations and
// aborted bodies, every backend's in-flight count returns to zero.
func TestInflightExact(t *testing.T) {
	t.Parallel()
	modes := []int32{modeOK, modeReset, mode500, modeBlock, modeMidBody}
	var bs []*testBackend
	for i, m := range modes {
		b := newTestBackend(t, "b"+string(rune('0'+i)))
		b.mode.Store(m)
		bs = append(bs, b)
	}
	urls := append(backendURLs(bs...), "http://"+deadAddr(t))
	for _, balance := range []string{"round_robin", "least_conn", "random_two"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			pool := newTestPool(t, func(u *config.Upstream) {
				u.Balance = balance
				u.Retries = config.Retries{Max: 2, BudgetPercent: 50, MaxBody: 1024}
				u.Timeouts.Queue = config.Duration(time.Minute)
				u.Backends[0].MaxConns = 3
			}, urls...)
			front := serveProxy(t, NewProxy(pool, quietOptions()))
			var wg sync.WaitGroup
			for i := range 60 {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+rand.IntN(80))*time.Millisecond)
					defer cancel()
					method, body := http.MethodGet, io.Reader(nil)
					if i%3 == 0 {
						method, body = http.MethodPut, strings.NewReader("put body")
					}
					req, _ := http.NewRequestWithContext(ctx, method, front.URL+"/", body)
					res, err := front.Client().Do(req)
					if err == nil {
						io.Copy(io.Discard, res.Body)
						res.Body.Close()
					}
				})
			}
			wg.Wait()
			waitInflightZero(t, pool)
		})
	}
}
