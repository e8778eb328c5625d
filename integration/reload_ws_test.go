package integration

// Live reloads and shutdown with long-lived connections: WebSocket tunnels
// across reloads (kept on unchanged routes, closed after
// global.reload_grace on removed ones), and graceful shutdown under load.
// The shared reload helpers are in reload_test.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ---------------------------------------------------------------- helpers

// wsEcho sends msg on c and waits for the same text back.
func wsEcho(ctx context.Context, c *websocket.Conn, msg string) error {
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	typ, data, err := c.Read(ctx)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if typ != websocket.MessageText || string(data) != msg {
		return fmt.Errorf("got %v %q, want text %q", typ, truncate(data), msg)
	}
	return nil
}

// echoAll runs wsEcho on every connection at once and returns the failures.
func echoAll(conns []*websocket.Conn, tag string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			if err := wsEcho(ctx, c, fmt.Sprintf("%s/%d", tag, i)); err != nil {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("conn %d: %v", i, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(bad)
	return bad
}

func sigString(p *time.Time) string {
	if p == nil {
		return "not yet"
	}
	return p.Format("15:04:05.000")
}

// ---------------------------------------------------------------- tests

// TestReloadWebSockets opens 100 WebSockets on a route every config keeps
// and 10 on a route the first reload removes, then reloads 10 times
// through POST /reload. The 100 must echo after every reload and still
// after the last reload's grace has passed; the 10 must still echo right
// after the reload that removed their route and be closed once
// reload_grace (500ms) has passed, within 5s more.
func TestReloadWebSockets(t *testing.T) {
	t.Parallel()
	const (
		keepN = 100
		goneN = 10
		grace = 500 * time.Millisecond
	)
	raiseNoFile(t, 2048)
	wb := newWSBackend(t)
	cfg := func(version string, withGone bool) string {
		gone := ""
		if withGone {
			gone = "      - path: /gone\n        upstream: echo\n"
		}
		return fmt.Sprintf(`
upstreams:
  echo:
    backends: [{url: %s}]
sites:
  - hosts: [127.0.0.1]
    tls: off
    routes:
      - path: /keep
        upstream: echo
%s      - path: /status
        respond: {status: 200, body: "%s\n"}
`, wb.URL, gone, version)
	}
	ag := startAdminGatewayCfg(t, GatewayConfig{Global: "reload_grace: 500ms", Body: cfg("v0", true)})
	global := configGlobal(t, ag.ConfigPath)

	tr := &http.Transport{Proxy: nil, DisableCompression: true, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	target := wsTarget{Name: "ws", Base: "ws://" + ag.Addr, Client: &http.Client{Transport: tr}}
	dialN := func(path string, n int) []*websocket.Conn {
		conns := make([]*websocket.Conn, n)
		errs := make([]error, n)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				conns[i], _, errs[i] = target.tryDial(ctx, path, nil)
			})
		}
		wg.Wait()
		for i, c := range conns {
			if c != nil {
				t.Cleanup(func() { c.CloseNow() }) // before the gateway stops
			} else {
				t.Fatalf("dialing %s #%d through the gateway: %v", path, i, errs[i])
			}
		}
		return conns
	}
	keep := dialN("/keep", keepN)
	gone := dialN("/gone", goneN)
	wb.waitActive(t, keepN+goneN, 10*time.Second)
	if bad := echoAll(keep, "before/keep"); len(bad) > 0 {
		t.Fatalf("/keep before any reload: %d failed: %v", len(bad), bad)
	}
	if bad := echoAll(gone, "before/gone"); len(bad) > 0 {
		t.Fatalf("/gone before any reload: %d failed: %v", len(bad), bad)
	}

	// Reload 1 removes /gone.
	writeConfig(t, ag.ConfigPath, global, cfg("v1", false))
	t0 := time.Now() // the grace timer cannot start before this
	if status, out := ag.reload(t); status != http.StatusOK || out["reloaded"] != true {
		t.Fatalf("reload 1: POST /reload = %d %v", status, out)
	}
	t1 := time.Now() // ...nor after this
	bad := echoAll(gone, "after/gone")
	if echoed := time.Since(t0); len(bad) > 0 {
		if echoed < grace {
			t.Errorf("/gone tunnels failed %v after the reload that removed their route, before reload_grace %v: %v", echoed, grace, bad)
		} else {
			t.Logf("inconclusive: echoing on /gone took %v, past reload_grace: %v", echoed, bad)
		}
	}
	if r := ag.Get(t, "127.0.0.1", "/gone"); r.Status != http.StatusNotFound {
		t.Errorf("GET /gone after its route was removed = %d, want 404", r.Status)
	}
	// Each /gone connection reports when it ends.
	closedAt := make([]time.Time, goneN)
	closeErr := make([]error, goneN)
	var goneWG sync.WaitGroup
	for i, c := range gone {
		goneWG.Go(func() {
			ctx, cancel := context.WithDeadline(context.Background(), t1.Add(grace+5*time.Second))
			defer cancel()
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					if ctx.Err() == nil {
						closedAt[i] = time.Now()
					}
					closeErr[i] = err
					return
				}
				closeErr[i] = fmt.Errorf("unexpected message %q", truncate(data))
			}
		})
	}

	if bad := echoAll(keep, "reload1/keep"); len(bad) > 0 {
		t.Errorf("/keep after reload 1: %d of %d failed: %v", len(bad), keepN, bad)
	}
	if r := ag.Get(t, "127.0.0.1", "/status"); r.Body != "v1\n" {
		t.Errorf("after reload 1 GET /status = %d %q, want \"v1\\n\"", r.Status, r.Body)
	}
	var last time.Time
	for i := 2; i <= 10; i++ {
		version := fmt.Sprintf("v%d", i)
		writeConfig(t, ag.ConfigPath, global, cfg(version, false))
		if status, out := ag.reload(t); status != http.StatusOK || out["reloaded"] != true {
			t.Fatalf("reload %d: POST /reload = %d %v", i, status, out)
		}
		last = time.Now()
		if r := ag.Get(t, "127.0.0.1", "/status"); r.Body != version+"\n" {
			t.Errorf("after reload %d GET /status = %d %q, want %q", i, r.Status, r.Body, version+"\n")
		}
		if bad := echoAll(keep, fmt.Sprintf("reload%d/keep", i)); len(bad) > 0 {
			t.Errorf("/keep after reload %d: %d of %d failed: %v", i, len(bad), keepN, bad)
		}
	}

	goneWG.Wait()
	for i := range gone {
		switch {
		case closedAt[i].IsZero():
			t.Errorf("/gone conn %d still open %v after the reload that removed its route (reload_grace %v): %v",
				i, time.Since(t1).Round(time.Millisecond), grace, closeErr[i])
		case closedAt[i].Sub(t0) < grace:
			t.Errorf("/gone conn %d closed %v after the reload, before reload_grace %v", i, closedAt[i].Sub(t0), grace)
		}
	}
	ag.WaitLog(5*time.Second, "closing the 10 tunnels of the removed route", func(m map[string]any) bool {
		return m["msg"] == "closed websocket tunnels of removed or changed routes" && m["count"] == float64(goneN)
	})
	wb.waitActive(t, keepN, 5*time.Second) // the backend ends of /gone closed too

	// Every reload's grace has passed: nothing scheduled may have touched
	// the unchanged route. (A deliberate wait: this checks that nothing
	// happens.)
	time.Sleep(time.Until(last.Add(2 * grace)))
	if bad := echoAll(keep, "final/keep"); len(bad) > 0 {
		t.Errorf("/keep after every reload's grace passed: %d of %d failed: %v", len(bad), keepN, bad)
	}
	if n := len(logsWith(ag.Proc, "closed websocket tunnels of removed or changed routes")); n != 1 {
		t.Errorf("%d log lines about closing tunnels of removed routes, want exactly 1 (reload 1's)", n)
	}
	pollUntil(t, 5*time.Second, "gatehouse_websocket_tunnels_open = 100", func() (bool, string) {
		v := metricValue(t, scrapeMetrics(t, ag), "gatehouse_websocket_tunnels_open", nil)
		return v == keepN, fmt.Sprint(v)
	})
}

// TestReloadShutdownUnderLoad sends SIGTERM while 20 clients keep requests
// in flight on a backend that takes 100ms each. Every request that reached
// the backend must be answered 200 with its full body; requests that found
// the listener closed may fail to connect, nothing else may fail; and the
// process exits 0 well within shutdown_timeout.
func TestReloadShutdownUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		clients         = 20
		shutdownTimeout = 5 * time.Second
	)
	var arrived atomic.Int64
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "slow:"+r.URL.Path)
	})
	g := startGateway(t, GatewayConfig{
		Global: "shutdown_timeout: 5s",
		Body: fmt.Sprintf(`
sites:
  - hosts: [slow.test]
    tls: off
    routes:
      - path: /
        upstream: [%s]
`, be.URL),
	})

	var sigAt atomic.Pointer[time.Time]
	var ok, drained, refused, retried, notAccepted atomic.Int64
	var failMu sync.Mutex
	var failures []string
	fail := func(s string) {
		failMu.Lock()
		failures = append(failures, s)
		failMu.Unlock()
	}
	var wg sync.WaitGroup
	quit := make(chan struct{}) // closed when the test ends early
	for i := range clients {
		c := newClient()
		wg.Go(func() {
			defer c.CloseIdleConnections()
			deadline := time.Now().Add(30 * time.Second) // hang guard
			for n := 0; time.Now().Before(deadline); n++ {
				select {
				case <-quit:
					return
				default:
				}
				path := fmt.Sprintf("/c%d/%d", i, n)
				var tmu sync.Mutex
				var conns int
				var reused bool
				var connAt time.Time
				var gotByte atomic.Bool
				trace := &httptrace.ClientTrace{
					GotConn: func(info httptrace.GotConnInfo) {
						tmu.Lock()
						conns++
						reused, connAt = info.Reused, time.Now()
						tmu.Unlock()
					},
					GotFirstResponseByte: func() { gotByte.Store(true) },
				}
				ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), 15*time.Second)
				start := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.BaseURL+path, nil)
				req.Host = "slow.test"
				resp, err := c.Do(req)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				cancel()
				sig := sigAt.Load()
				tmu.Lock()
				wasReused, connAt, attempts := reused, connAt, conns
				tmu.Unlock()
				switch {
				case err == nil && resp.StatusCode == http.StatusOK && string(body) == "slow:"+path:
					ok.Add(1)
					if sig != nil && start.Before(*sig) {
						drained.Add(1)
					}
					continue
				case err == nil:
					fail(fmt.Sprintf("GET %s: %d %q", path, resp.StatusCode, body))
				case errors.Is(err, syscall.ECONNREFUSED):
					refused.Add(1) // the listener is closed: expected after SIGTERM
					if attempts > 0 {
						// The transport retried it after its kept-alive
						// connection closed: the gateway must not have
						// accepted it (checked below: arrived == ok).
						retried.Add(1)
					}
					if sig == nil {
						fail(fmt.Sprintf("GET %s: refused before SIGTERM: %v", path, err))
					}
				case sig != nil && !wasReused && !connAt.IsZero() && connAt.After(*sig) && !gotByte.Load() &&
					(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)):
					// A connection dialed after SIGTERM that sat in the
					// closing listener's backlog: never accepted.
					notAccepted.Add(1)
				default:
					fail(fmt.Sprintf("GET %s (reused conn %v, first byte %v, start %v, SIGTERM %v): %v",
						path, wasReused, gotByte.Load(), start.Format("15:04:05.000"), sigString(sig), err))
				}
				return // the gateway is going away: stop this client
			}
			fail(fmt.Sprintf("client %d still getting answers 30s later", i))
		})
	}
	t.Cleanup(func() { close(quit); wg.Wait() }) // before the gateway is stopped

	pollUntil(t, 15*time.Second, "two rounds of requests answered", func() (bool, string) {
		return ok.Load() >= 2*clients, fmt.Sprintf("%d ok", ok.Load())
	})
	now := time.Now()
	sigAt.Store(&now)
	g.Signal(syscall.SIGTERM)
	code, exited := g.WaitExit(shutdownTimeout + 5*time.Second)
	took := time.Since(now)
	wg.Wait()
	switch {
	case !exited:
		t.Fatalf("gatehouse still running %v after SIGTERM (shutdown_timeout %v)", took.Round(time.Millisecond), shutdownTimeout)
	case code != 0:
		t.Errorf("exit code after SIGTERM under load = %d, want 0", code)
	case took >= shutdownTimeout:
		t.Errorf("gatehouse took %v to exit after SIGTERM, want less than shutdown_timeout %v (the in-flight requests need 100ms)",
			took.Round(time.Millisecond), shutdownTimeout)
	}
	t.Logf("%d answered (%d of them in flight at SIGTERM), %d refused (%d of them on a retry after a kept-alive connection closed), "+
		"%d reset before accept, %d failed; exit after %v",
		ok.Load(), drained.Load(), refused.Load(), retried.Load(), notAccepted.Load(), len(failures), took.Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d requests failed other than by a refused connection:\n  %s", len(failures), strings.Join(failures, "\n  "))
	}
	if drained.Load() == 0 {
		t.Errorf("no request that was in flight at SIGTERM was answered")
	}
	if a, o := arrived.Load(), ok.Load(); a != o {
		t.Errorf("the backend got %d requests but clients got %d answers: %d accepted requests were lost", a, o, a-o)
	}
	if len(logsWith(g.Proc, "stopped")) == 0 {
		t.Errorf("no \"stopped\" log line after a clean shutdown")
	}
}
