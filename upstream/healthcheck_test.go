package upstream

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// fastChecks is a health check for tests: every 20ms.
func fastChecks(mod func(*config.HealthCheck)) func(*config.Upstream) {
	return func(u *config.Upstream) {
		u.HealthCheck = &config.HealthCheck{
			Path:     "/health",
			Interval: config.Duration(20 * time.Millisecond),
			Timeout:  config.Duration(time.Second),
			Rise:     2,
			Fall:     3,
		}
		if mod != nil {
			mod(u.HealthCheck)
		}
	}
}

// TestHealthCheckThresholds drives the rise/fall state machine directly:
// a healthy backend leaves after exactly fall failures in a row, returns
// after exactly rise passes in a row, and a result of the other kind
// starts the count over.
func TestHealthCheckThresholds(t *testing.T) {
	t.Parallel()
	fail := errors.New("probe failed")
	tests := []struct{ rise, fall int }{{1, 1}, {2, 3}, {3, 2}, {5, 5}}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("rise %d fall %d", tc.rise, tc.fall), func(t *testing.T) {
			t.Parallel()
			p := newTestPool(t, fastChecks(func(h *config.HealthCheck) { h.Rise, h.Fall = tc.rise, tc.fall }), "http://10.0.0.1:80")
			c := &checker{pool: p, hc: p.health, log: quietOptions().Logger}
			b := p.Backends[0]
			// An interrupted streak does not count.
			for range tc.fall - 1 {
				c.apply(b, fail)
			}
			c.apply(b, nil)
			for i := range tc.fall {
				if !b.Healthy() {
					t.Fatalf("unhealthy after %d failures, fall is %d", i, tc.fall)
				}
				c.apply(b, fail)
			}
			if b.Healthy() {
				t.Fatalf("still healthy after %d failures", tc.fall)
			}
			for range tc.rise - 1 {
				c.apply(b, nil)
			}
			c.apply(b, fail)
			for i := range tc.rise {
				if b.Healthy() {
					t.Fatalf("healthy after %d passes, rise is %d", i, tc.rise)
				}
				c.apply(b, nil)
			}
			if !b.Healthy() {
				t.Fatalf("still unhealthy after %d passes", tc.rise)
			}
		})
	}
}

// TestHealthCheckRotation: a backend whose checks start failing leaves
// rotation (after at least fall failed probes), gets no requests while
// out, and comes back (after at least rise passed probes).
func TestHealthCheckRotation(t *testing.T) {
	t.Parallel()
	a, b, c := newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c")
	log, logs := testLogger()
	u := upstreamConfig(t, a.URL, b.URL, c.URL)
	fastChecks(nil)(u)
	pool, err := NewPool(u, PoolOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	pool.Start()
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	client := front.Client()
	waitFor(t, 5*time.Second, "first probes", func() bool { return b.checks.Load() > 0 })

	downBefore := b.downChecks.Load()
	b.failing.Store(true)
	waitFor(t, 5*time.Second, "b to leave rotation", func() bool { return !pool.Backends[1].Healthy() })
	if n := b.downChecks.Load() - downBefore; n < 3 {
		t.Errorf("left rotation after %d failed probes, fall is 3", n)
	}
	hits := b.hits.Load()
	for range 30 {
		if code, body, _ := get(t, client, front.URL+"/"); code != http.StatusOK || body == "b" {
			t.Fatalf("got %d %q while b is out", code, body)
		}
	}
	if n := b.hits.Load() - hits; n != 0 {
		t.Errorf("b got %d requests while out of rotation", n)
	}
	st := pool.Status().Backends[1]
	if st.Healthy || !strings.Contains(st.LastCheckError, "503") {
		t.Errorf("status %+v", st)
	}

	upBefore := b.upChecks.Load()
	b.failing.Store(false)
	waitFor(t, 5*time.Second, "b to return", func() bool { return pool.Backends[1].Healthy() })
	if n := b.upChecks.Load() - upBefore; n < 2 {
		t.Errorf("returned after %d passed probes, rise is 2", n)
	}
	seen := false
	for range 6 {
		if _, body, _ := get(t, client, front.URL+"/"); body == "b" {
			seen = true
		}
	}
	if !seen {
		t.Error("b gets no requests after returning")
	}
	if st := pool.Status().Backends[1]; st.LastCheckError != "" {
		t.Errorf("last_check_error %q after recovery", st.LastCheckError)
	}
	text := logs.String()
	if !strings.Contains(text, "backend left rotation") || !strings.Contains(text, "backend back in rotation") {
		t.Errorf("transitions not logged: %s", text)
	}
}

func TestHealthCheckFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mod     func(*config.HealthCheck)
		breakIt func(tb *testBackend) string // returns the URL to probe
		wantErr string
	}{
		{"body mismatch", func(h *config.HealthCheck) { h.ExpectBody = "OK" },
			func(tb *testBackend) string { tb.degraded.Store(true); return tb.URL },
			"body does not contain the expected text"},
		{"status outside the range", func(h *config.HealthCheck) { h.ExpectStatus = config.StatusRange{Min: 200, Max: 299} },
			func(tb *testBackend) string { tb.failing.Store(true); return tb.URL },
			"status 503, expected 200-299"},
		{"connection refused", nil,
			func(tb *testBackend) string { return "http://" + deadAddr(t) },
			"connect: connection refused"},
		{"timeout", func(h *config.HealthCheck) { h.Path = "/slow"; h.Timeout = config.Duration(50 * time.Millisecond) },
			func(tb *testBackend) string { tb.mode.Store(modeBlock); return tb.URL },
			"timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := newTestBackend(t, "x")
			target := tc.breakIt(tb)
			pool := newTestPool(t, fastChecks(func(h *config.HealthCheck) {
				h.Fall = 1
				if tc.mod != nil {
					tc.mod(h)
				}
			}), target)
			pool.log = quietOptions().Logger
			pool.Start()
			waitFor(t, 5*time.Second, "backend to leave rotation", func() bool { return !pool.Backends[0].Healthy() })
			if got := pool.Status().Backends[0].LastCheckError; got != tc.wantErr {
				t.Errorf("last_check_error %q, want %q", got, tc.wantErr)
			}
		})
	}
	t.Run("body match passes", func(t *testing.T) {
		t.Parallel()
		tb := newTestBackend(t, "x")
		pool := newTestPool(t, fastChecks(func(h *config.HealthCheck) { h.ExpectBody = "OK"; h.Fall = 1 }), tb.URL)
		pool.Start()
		waitFor(t, 5*time.Second, "5 probes", func() bool { return tb.checks.Load() >= 5 })
		if !pool.Backends[0].Healthy() {
			t.Errorf("healthy backend taken out: %q", pool.Status().Backends[0].LastCheckError)
		}
	})
}

// TestHealthCheckRequest: the probe's Host (health_check.host, else
// host_header, else the backend's), User-Agent, and HTTP version (h2c
// backends are probed over prior-knowledge HTTP/2).
func TestHealthCheckRequest(t *testing.T) {
	t.Parallel()
	type probe struct{ host, ua, proto string }
	got := make(chan probe, 64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- probe{r.Host, r.UserAgent(), r.Proto}:
		default:
		}
		io.WriteString(w, "OK")
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	h2c := strings.Replace(srv.URL, "http://", "h2c://", 1)
	tests := []struct {
		name      string
		url       string
		check     string
		hostHdr   string
		wantHost  string
		wantProto string
	}{
		{"backend host", srv.URL, "", "", srv.Listener.Addr().String(), "HTTP/1.1"},
		{"host_header", srv.URL, "", "api.internal", "api.internal", "HTTP/1.1"},
		{"health_check host wins", srv.URL, "health.internal", "api.internal", "health.internal", "HTTP/1.1"},
		{"h2c", h2c, "", "", srv.Listener.Addr().String(), "HTTP/2.0"},
	}
	for _, tc := range tests { // sequential: one server, one channel
		pool := newTestPool(t, func(u *config.Upstream) {
			fastChecks(func(h *config.HealthCheck) { h.Host = tc.check })(u)
			u.HostHeader = tc.hostHdr
		}, tc.url)
		pool.Start()
		p := <-got
		pool.Close()
		for len(got) > 0 {
			<-got
		}
		if p.host != tc.wantHost || p.ua != checkUserAgent || p.proto != tc.wantProto {
			t.Errorf("%s: probe %+v, want host %q proto %s", tc.name, p, tc.wantHost, tc.wantProto)
		}
	}
}

// checkerFrames counts goroutines running the health checker or a probe.
func checkerFrames() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "upstream.(*checker)") {
			n++
		}
	}
	return n
}

// TestHealthCheckerStops: NewPool starts nothing, Start starts the checker
// once, Close stops it and waits (goroutines back to the baseline), Close is
// idempotent and Start after Close is a no-op. Not parallel, so that no
// other test's checker runs meanwhile.
func TestHealthCheckerStops(t *testing.T) {
	tb := newTestBackend(t, "x")
	tb.mode.Store(modeBlock) // a probe that hangs must not keep the checker
	baseline := runtime.NumGoroutine()
	pool, err := NewPool(func() *config.Upstream {
		u := upstreamConfig(t, tb.URL, "http://"+deadAddr(t))
		fastChecks(func(h *config.HealthCheck) { h.Path = "/hang" })(u)
		return u
	}())
	if err != nil {
		t.Fatal(err)
	}
	if n := checkerFrames(); n != 0 {
		t.Fatalf("NewPool started %d checker goroutines", n)
	}
	pool.Start()
	pool.Start() // once only
	waitFor(t, 5*time.Second, "a probe to hang", func() bool { return tb.hits.Load() > 0 })
	var closed atomic.Bool
	go func() { pool.Close(); closed.Store(true) }()
	waitFor(t, 5*time.Second, "Close to return", closed.Load)
	if n := checkerFrames(); n != 0 {
		t.Errorf("%d checker goroutines after Close returned", n)
	}
	pool.Close()
	pool.Start()
	if n := checkerFrames(); n != 0 {
		t.Errorf("Start after Close started %d checker goroutines", n)
	}
	waitFor(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})

	// A pool without health checks: Start does nothing.
	plain := newTestPool(t, nil, tb.URL)
	plain.Start()
	if n := checkerFrames(); n != 0 {
		t.Errorf("Start without health_check started %d goroutines", n)
	}
}
