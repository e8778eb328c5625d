package upstream

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Modes of a testBackend for requests other than its health path.
const (
	modeOK      int32 = iota // 200, body "<name>"
	modeReset                // hijack and close without answering
	mode500                  // 500
	modeBlock                // wait until release is closed (or the request ends), then 200
	modeMidBody              // headers and part of the body, then drop the connection
	modeSlow                 // 200 after 10ms (simulated latency)
)

// testBackend is a real backend that can be flipped, slowed and broken
// while a test runs. /health answers 200 "OK" (503 "DOWN" while failing,
// "DEGRADED" with 200 while degraded); every other path is counted in hits
// and served by mode.
type testBackend struct {
	*httptest.Server
	name   string
	hits   atomic.Int64 // non-health requests
	checks atomic.Int64 // health probes
	// downChecks and upChecks count probes answered failing and OK.
	downChecks atomic.Int64
	upChecks   atomic.Int64
	failing    atomic.Bool
	degraded   atomic.Bool
	mode       atomic.Int32
	arrived    chan struct{} // one send per modeBlock request that arrived (buffered)
	release    chan struct{} // closed to let blocked requests finish
	conc       atomic.Int64  // requests being served now
	maxConc    atomic.Int64  // the most served at once
	bodies     chan string   // request bodies, when recorded

	mu         sync.Mutex
	lastHost   string // Host of the last health probe
	lastUA     string
	releaseOne sync.Once
}

func newTestBackend(t testing.TB, name string) *testBackend {
	t.Helper()
	tb := &testBackend{name: name, arrived: make(chan struct{}, 1024), release: make(chan struct{}), bodies: make(chan string, 1024)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(tb.serve))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	tb.Server = srv
	t.Cleanup(func() {
		tb.unblock()
		srv.Close()
	})
	return tb
}

func (tb *testBackend) unblock() { tb.releaseOne.Do(func() { close(tb.release) }) }

func (tb *testBackend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		tb.checks.Add(1)
		tb.mu.Lock()
		tb.lastHost, tb.lastUA = r.Host, r.UserAgent()
		tb.mu.Unlock()
		switch {
		case tb.failing.Load():
			tb.downChecks.Add(1)
			http.Error(w, "DOWN", http.StatusServiceUnavailable)
		case tb.degraded.Load():
			io.WriteString(w, "DEGRADED")
		default:
			tb.upChecks.Add(1)
			io.WriteString(w, "OK")
		}
		return
	}
	tb.hits.Add(1)
	n := tb.conc.Add(1)
	defer tb.conc.Add(-1)
	for {
		m := tb.maxConc.Load()
		if n <= m || tb.maxConc.CompareAndSwap(m, n) {
			break
		}
	}
	b, _ := io.ReadAll(r.Body)
	select {
	case tb.bodies <- string(b):
	default:
	}
	switch tb.mode.Load() {
	case modeReset:
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
		return
	case mode500:
		http.Error(w, "broken", http.StatusInternalServerError)
		return
	case modeBlock:
		tb.arrived <- struct{}{}
		select {
		case <-tb.release:
		case <-r.Context().Done():
			return
		}
	case modeMidBody:
		w.WriteHeader(http.StatusOK) // unknown length: the proxy flushes at once
		io.WriteString(w, "partial")
		http.NewResponseController(w).Flush()
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
		return
	case modeSlow:
		time.Sleep(10 * time.Millisecond)
	}
	io.WriteString(w, tb.name)
}

// backendURLs lists the servers' URLs.
func backendURLs(bs ...*testBackend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.URL
	}
	return out
}

// get sends a GET and returns the status, body and header; it fails the
// test on a transport error. (From other goroutines use fetch.)
func get(t testing.TB, c *http.Client, url string, header ...string) (int, string, http.Header) {
	t.Helper()
	code, body, h, err := fetch(c, url, header...)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return code, body, h
}

// fetch sends a GET with header (name, value pairs).
func fetch(c *http.Client, url string, header ...string) (int, string, http.Header, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header, err
}

// fakeClock is a pool clock that moves only when told.
type fakeClock struct{ t atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.t.Store(int64(time.Hour))
	return c
}

func (c *fakeClock) now() int64              { return c.t.Load() }
func (c *fakeClock) advance(d time.Duration) { c.t.Add(int64(d)) }

// poolOf builds a pool of the named fake addresses (nothing listens) with
// weights, configured by mod.
func poolOf(t testing.TB, weights []int, mod func(*config.Upstream)) *Pool {
	t.Helper()
	urls := make([]string, len(weights))
	for i := range weights {
		urls[i] = "http://10.0.0." + strconv.Itoa(i+1) + ":80"
	}
	return newTestPool(t, func(u *config.Upstream) {
		for i, w := range weights {
			u.Backends[i].Weight = w
		}
		if mod != nil {
			mod(u)
		}
	}, urls...)
}

// noAddress fails the test if body mentions any of the backends' addresses.
func noAddress(t testing.TB, body string, pool *Pool) {
	t.Helper()
	for _, b := range pool.Backends {
		if strings.Contains(body, b.URL.Host) {
			t.Errorf("body %q leaks backend address %s", body, b.URL.Host)
		}
	}
}

// waitInflightZero polls until every backend of pool has nothing in flight.
func waitInflightZero(t testing.TB, pool *Pool) {
	t.Helper()
	waitFor(t, 10*time.Second, "inflight back to 0", func() bool {
		for _, b := range pool.Backends {
			if b.Inflight() != 0 {
				return false
			}
		}
		return true
	})
}
