package integration

// Live reloads of the running gateway: SIGHUP and the admin API's POST
// /reload under load, a broken file that must leave the running config in
// place, WebSocket tunnels across reloads (kept on unchanged routes, closed
// after global.reload_grace on removed ones), requests in flight across a
// reload, graceful shutdown under load, `run --watch`, `validate`'s reload
// plan against a running gateway, and reloads of settings that are built
// once at start (admin_public, a manual certificate's files): they must be
// applied or refused with 409, never reported as done and left unapplied.
//
// Helpers shared with metrics_test.go and access_test.go live here too:
// startAdminGatewayCfg (an admin-enabled gateway from a full GatewayConfig),
// configGlobal / writeConfig (rewrite the body of a config while keeping its
// global: block, so no reload ever needs a restart), and fetch (a request
// that returns its error instead of failing the test, for goroutines).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"regexp"
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

// startAdminGatewayCfg is startAdminGateway for a full GatewayConfig (Env
// included): cfg.Global gets an admin: line on a free loopback port (fresh
// on each start attempt), extraArgs follow `run --config PATH`, and it waits
// until the admin API answers /healthz. cfg.Args must be nil.
func startAdminGatewayCfg(t testing.TB, cfg GatewayConfig, extraArgs ...string) *adminGateway {
	t.Helper()
	if cfg.Args != nil {
		t.Fatal("startAdminGatewayCfg builds the command line itself; cfg.Args must be nil")
	}
	ag := &adminGateway{admin: newClient()}
	t.Cleanup(ag.admin.CloseIdleConnections)
	cfg.Global = "admin: 127.0.0.1:1\n" + cfg.Global // port replaced per attempt below
	cfg.Args = func(path string) []string {
		ag.AdminAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		data = adminLine.ReplaceAll(data, []byte("${1}"+ag.AdminAddr))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return append([]string{"run", "--config", path}, extraArgs...)
	}
	ag.Gateway = startGateway(t, cfg)
	ag.AdminURL = "http://" + ag.AdminAddr
	pollUntil(t, 10*time.Second, "admin API answering /healthz on "+ag.AdminAddr, func() (bool, string) {
		req, _ := http.NewRequest(http.MethodGet, ag.AdminURL+"/healthz", nil)
		resp, err := ag.admin.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return ag
}

// configGlobal returns the global: block (the first line and every
// indented or blank line after it) of the config file at path, as the
// harness wrote it: ports, data_dir and admin address included.
func configGlobal(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, line := range strings.SplitAfter(string(data), "\n") {
		if i == 0 {
			if strings.TrimSpace(line) != "global:" {
				t.Fatalf("%s does not start with global: (%q)", path, line)
			}
		} else if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, " ") {
			break
		}
		b.WriteString(line)
	}
	return b.String()
}

// writeConfig replaces the file at path by global followed by body,
// atomically (a new file renamed over it), so that a reload or the file
// watcher never reads half a file.
func writeConfig(t testing.TB, path, global, body string) {
	t.Helper()
	text := global + strings.TrimLeft(body, "\n")
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// fetch sends GET url with Host host on c and reads the whole body; unlike
// Gateway.Get it returns its error, so goroutines can use it.
func fetch(c *http.Client, host, url string, header http.Header) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// reload sends POST /reload to the admin API and decodes its JSON answer.
func (ag *adminGateway) reload(t testing.TB) (int, map[string]any) {
	t.Helper()
	r := ag.Admin(t, http.MethodPost, "/reload")
	var out map[string]any
	if err := json.Unmarshal([]byte(r.Body), &out); err != nil {
		t.Fatalf("POST /reload = %d, body is not JSON: %v\n%s", r.Status, err, r.Body)
	}
	return r.Status, out
}

// waitBody polls GET host+path until it answers 200 with body want.
func waitBody(t testing.TB, g *Gateway, d time.Duration, host, path, want string) {
	t.Helper()
	pollUntil(t, d, fmt.Sprintf("GET %s%s answering 200 %q", host, path, want), func() (bool, string) {
		r := g.Get(t, host, path)
		return r.Status == http.StatusOK && r.Body == want, fmt.Sprintf("%d %q", r.Status, r.Body)
	})
}

// logsWith returns the JSON log lines whose msg is msg.
func logsWith(p *Proc, msg string) []map[string]any {
	objs, _ := p.LogLines()
	var out []map[string]any
	for _, o := range objs {
		if o["msg"] == msg {
			out = append(out, o)
		}
	}
	return out
}

// ---------------------------------------------------------------- tests

// TestReloadUnderLoad rewrites the config 20 times, alternating between two
// valid files A and B and between SIGHUP and POST /reload, while four
// clients (three on keep-alive connections, one opening a connection per
// request) hammer a proxied route both files keep. Not one of those
// requests may fail or see another answer; right after every reload the
// route only B has (/new) must answer 200 under B and 404 under A.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "backend:"+r.URL.Path)
	})
	cfg := func(version string, withNew bool) string {
		extra := ""
		if withNew {
			extra = "      - path: /new\n        respond: {status: 200, body: \"new\\n\"}\n"
		}
		return fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
sites:
  - hosts: [load.test]
    tls: off
    routes:
      - path: /api/
        upstream: app
      - path: /page
        respond: {status: 200, body: "%s\n"}
%s`, be.URL, version, extra)
	}
	cfgA, cfgB := cfg("A", false), cfg("B", true)
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: cfgA})
	global := configGlobal(t, ag.ConfigPath)
	waitBody(t, ag.Gateway, 10*time.Second, "load.test", "/page", "A\n")

	var ok, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		c := newClient()
		if i == 3 {
			c.Transport.(*http.Transport).DisableKeepAlives = true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.CloseIdleConnections()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/api/c%d/%d", i, n)
				status, body, err := fetch(c, "load.test", ag.BaseURL+path, nil)
				if err == nil && status == http.StatusOK && body == "backend:"+path {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				failMu.Lock()
				if len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("GET %s: status %d body %q err %v", path, status, body, err))
				}
				failMu.Unlock()
			}
		}()
	}
	var stopOnce sync.Once
	stopLoad := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(stopLoad) // before the gateway stops, also when the test fails early

	pollUntil(t, 10*time.Second, "the load running", func() (bool, string) {
		return ok.Load() >= 20, fmt.Sprintf("%d ok, %d failed", ok.Load(), failed.Load())
	})
	const reloads = 20
	for i := range reloads {
		toB := i%2 == 0
		text, page := cfgA, "A\n"
		if toB {
			text, page = cfgB, "B\n"
		}
		writeConfig(t, ag.ConfigPath, global, text)
		before := ok.Load()
		if (i/2)%2 == 0 {
			ag.Signal(syscall.SIGHUP)
			waitBody(t, ag.Gateway, 10*time.Second, "load.test", "/page", page)
		} else {
			status, out := ag.reload(t)
			if status != http.StatusOK || out["reloaded"] != true {
				t.Fatalf("reload %d: POST /reload = %d %v, want 200 {\"reloaded\": true}", i+1, status, out)
			}
			// POST /reload answers once the new config serves.
			if r := ag.Get(t, "load.test", "/page"); r.Status != http.StatusOK || r.Body != page {
				t.Errorf("reload %d: right after POST /reload, GET /page = %d %q, want 200 %q", i+1, r.Status, r.Body, page)
			}
		}
		r := ag.Get(t, "load.test", "/new")
		switch {
		case toB && (r.Status != http.StatusOK || r.Body != "new\n"):
			t.Errorf("reload %d (to B): GET /new = %d %q, want 200 \"new\\n\"", i+1, r.Status, r.Body)
		case !toB && r.Status != http.StatusNotFound:
			t.Errorf("reload %d (to A): GET /new = %d %q, want 404", i+1, r.Status, r.Body)
		}
		// Requests keep flowing across the swap.
		pollUntil(t, 10*time.Second, fmt.Sprintf("requests after reload %d", i+1), func() (bool, string) {
			return ok.Load() >= before+20, fmt.Sprintf("%d ok since the reload, %d failed", ok.Load()-before, failed.Load())
		})
	}
	stopLoad()
	t.Logf("%d requests during %d reloads, %d failed", ok.Load(), reloads, failed.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests to the unchanged route failed during reloads; first: %s",
			n, n+ok.Load(), strings.Join(failures, "\n  "))
	}
	if n := ok.Load(); n < 400 {
		t.Errorf("only %d requests completed during the reloads, want at least 400", n)
	}
	fams := scrapeMetrics(t, ag)
	if got := metricValue(t, fams, "gatehouse_config_reloads_total", map[string]string{"result": "success"}); got != reloads {
		t.Errorf(`gatehouse_config_reloads_total{result="success"} = %v, want %d`, got, reloads)
	}
	if got := metricValue(t, fams, "gatehouse_config_reloads_total", map[string]string{"result": "failure"}); got != 0 {
		t.Errorf(`gatehouse_config_reloads_total{result="failure"} = %v, want 0`, got)
	}
}

// TestReloadInvalidKeepsServing breaks the config file (an unknown key and
// a bad duration) and reloads it by SIGHUP and by POST /reload: both report
// every problem as FILE:LINE:COL, the previous config keeps serving, and
// both count as failed reloads in /metrics. A change that needs a restart is
// refused with 409, and a good file afterwards reloads.
func TestReloadInvalidKeepsServing(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("inv"))
	good := func(version string) string {
		return fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
sites:
  - hosts: [inv.test]
    tls: off
    routes:
      - path: /api/
        upstream: app
      - path: /
        respond: {status: 200, body: "%s\n"}
`, be.URL, version)
	}
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: good("v1")})
	global := configGlobal(t, ag.ConfigPath)
	waitBody(t, ag.Gateway, 10*time.Second, "inv.test", "/", "v1\n")
	stillServing := func(when string) {
		t.Helper()
		if ag.Exited() {
			t.Fatalf("%s: gatehouse exited (code %d)", when, ag.Cmd.ProcessState.ExitCode())
		}
		if r := ag.Get(t, "inv.test", "/"); r.Status != http.StatusOK || r.Body != "v1\n" {
			t.Errorf("%s: GET / = %d %q, want the previous config's 200 \"v1\\n\"", when, r.Status, r.Body)
		}
		if e := decodeEcho(t, ag.Get(t, "inv.test", "/api/x")); e.Path != "/api/x" {
			t.Errorf("%s: GET /api/x reached the backend as %q", when, e.Path)
		}
	}

	bad := global + strings.TrimLeft(fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
    timeouts:
      dial: 5 parsecs # ERR bad-duration
sites:
  - hosts: [inv.test]
    tls: off
    colour: blue # ERR unknown-key
    routes:
      - path: /
        respond: {status: 200, body: "v2\n"}
`, be.URL), "\n")
	errs := writeMarked(t, ag.ConfigPath, bad, map[string]string{"bad-duration": "duration", "unknown-key": "colour"})

	// SIGHUP: each problem logged as "config error" FILE:LINE:COL, then the
	// verdict.
	ag.Signal(syscall.SIGHUP)
	ag.WaitLog(10*time.Second, `"reload failed; the previous config keeps serving" after SIGHUP`, func(m map[string]any) bool {
		return m["msg"] == "reload failed; the previous config keeps serving" && m["trigger"] == "SIGHUP"
	})
	var logged []string
	for _, m := range logsWith(ag.Proc, "config error") {
		if m["level"] != "ERROR" {
			t.Errorf("config error logged at level %v, want ERROR: %v", m["level"], m)
		}
		s, _ := m["error"].(string)
		logged = append(logged, s)
	}
	assertReported(t, strings.Join(logged, "\n"), ag.ConfigPath, errs)
	stillServing("after SIGHUP with a broken file")

	// POST /reload: 422 with the same list.
	status, out := ag.reload(t)
	if status != http.StatusUnprocessableEntity || out["reloaded"] != false {
		t.Errorf("POST /reload of a broken file = %d %v, want 422 with \"reloaded\": false", status, out)
	}
	list, _ := out["errors"].([]any)
	var reported []string
	for _, e := range list {
		s, _ := e.(string)
		reported = append(reported, s)
	}
	if len(reported) != len(errs) {
		t.Errorf("POST /reload errors = %q, want %d entries", reported, len(errs))
	}
	assertReported(t, strings.Join(reported, "\n"), ag.ConfigPath, errs)
	stillServing("after POST /reload with a broken file")

	reloads := func(result string) float64 {
		t.Helper()
		return metricValue(t, scrapeMetrics(t, ag), "gatehouse_config_reloads_total", map[string]string{"result": result})
	}
	if got := reloads("failure"); got != 2 {
		t.Errorf(`gatehouse_config_reloads_total{result="failure"} = %v after a broken SIGHUP and a broken POST /reload, want 2`, got)
	}
	if got := reloads("success"); got != 0 {
		t.Errorf(`gatehouse_config_reloads_total{result="success"} = %v, want 0`, got)
	}

	// A valid file that changes a listener setting needs a restart: 409.
	writeConfig(t, ag.ConfigPath, global+"  limits:\n    idle_timeout: 1m\n", good("v3"))
	status, out = ag.reload(t)
	if msg, _ := out["error"].(string); status != http.StatusConflict || out["reloaded"] != false || !strings.Contains(msg, "restart") {
		t.Errorf("POST /reload of a change to global.limits = %d %v, want 409 naming a restart", status, out)
	}
	stillServing("after a reload that needs a restart")
	if got := reloads("failure"); got != 3 {
		t.Errorf(`gatehouse_config_reloads_total{result="failure"} = %v after the refused reload, want 3`, got)
	}

	// A good file reloads again.
	writeConfig(t, ag.ConfigPath, global, good("v4"))
	if status, out := ag.reload(t); status != http.StatusOK || out["reloaded"] != true {
		t.Fatalf("POST /reload of a good file = %d %v, want 200 {\"reloaded\": true}", status, out)
	}
	if r := ag.Get(t, "inv.test", "/"); r.Status != http.StatusOK || r.Body != "v4\n" {
		t.Errorf("after a good reload GET / = %d %q, want 200 \"v4\\n\"", r.Status, r.Body)
	}
	if got := reloads("success"); got != 1 {
		t.Errorf(`gatehouse_config_reloads_total{result="success"} = %v, want 1`, got)
	}
}

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

func sigString(p *time.Time) string {
	if p == nil {
		return "not yet"
	}
	return p.Format("15:04:05.000")
}

// TestReloadWatch runs `run --watch`: an edited file is served within a few
// seconds without any signal; a broken edit is logged as a failed reload
// and the previous config keeps serving; a fixed file is picked up again.
func TestReloadWatch(t *testing.T) {
	t.Parallel()
	g := startGateway(t, GatewayConfig{
		Body: respondSite("w1\n"),
		Args: func(path string) []string { return []string{"run", "--config", path, "--watch"} },
	})
	global := configGlobal(t, g.ConfigPath)
	waitBody(t, g, 10*time.Second, "watch.test", "/", "w1\n")
	g.WaitLog(5*time.Second, "watching the config file", func(m map[string]any) bool {
		return m["msg"] == "watching the config file for changes"
	})

	writeConfig(t, g.ConfigPath, global, respondSite("w2\n"))
	waitBody(t, g, 5*time.Second, "watch.test", "/", "w2\n")

	broken := respondSite("w3\n") + "no_such_section: true\n"
	writeConfig(t, g.ConfigPath, global, broken)
	g.WaitLog(5*time.Second, "a failed reload triggered by the watcher", func(m map[string]any) bool {
		return m["msg"] == "reload failed; the previous config keeps serving" && m["trigger"] == "watch"
	})
	if g.Exited() {
		t.Fatalf("gatehouse exited after a broken edit under --watch")
	}
	if r := g.Get(t, "watch.test", "/"); r.Status != http.StatusOK || r.Body != "w2\n" {
		t.Errorf("after a broken edit GET / = %d %q, want the previous 200 \"w2\\n\"", r.Status, r.Body)
	}
	errLine := regexp.MustCompile(`^` + regexp.QuoteMeta(g.ConfigPath) + `:\d+:\d+: .*no_such_section`)
	if !slices.ContainsFunc(logsWith(g.Proc, "config error"), func(m map[string]any) bool {
		s, _ := m["error"].(string)
		return errLine.MatchString(s)
	}) {
		t.Errorf("no \"config error\" log line %s:LINE:COL naming no_such_section", g.ConfigPath)
	}

	writeConfig(t, g.ConfigPath, global, respondSite("w4\n"))
	waitBody(t, g, 5*time.Second, "watch.test", "/", "w4\n")
	if n := len(logsWith(g.Proc, "config reloaded")); n != 2 {
		t.Errorf("%d \"config reloaded\" log lines, want 2 (one per good edit)", n)
	}
}

// TestReloadValidatePlan checks `gatehouse validate` on a file B that adds
// a route and removes a pool: with the gateway (running A) answering on B's
// admin address it prints the reload plan against the running gateway;
// with --against A it prints the same plan offline; neither changes what
// the gateway serves.
func TestReloadValidatePlan(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("plan"))
	dead := deadAddr(t)
	cfgA := fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
  old:
    backends: [{url: http://%s}]
sites:
  - hosts: [plan.test]
    tls: off
    routes:
      - path: /a
        upstream: app
      - path: /legacy
        upstream: old
`, be.URL, dead)
	cfgB := fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
sites:
  - hosts: [plan.test]
    tls: off
    routes:
      - path: /a
        upstream: app
      - path: /b
        respond: {status: 200, body: "b\n"}
`, be.URL)
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: cfgA})
	global := configGlobal(t, ag.ConfigPath)
	dir := t.TempDir()
	pathB := filepath.Join(dir, "b.yaml")
	writeConfig(t, pathB, global, cfgB)

	want := []string{"+ route plan.test/b", "- pool old", "- route plan.test/legacy"}
	planOf := func(stdout, header string) []string {
		t.Helper()
		_, rest, found := strings.Cut(stdout, header+"\n")
		if !found {
			t.Errorf("stdout has no line %q:\n%s", header, stdout)
			return nil
		}
		var lines []string
		for l := range strings.Lines(rest) {
			if !strings.HasPrefix(l, "  ") {
				break
			}
			lines = append(lines, strings.TrimSpace(l))
		}
		return lines
	}

	stdout, stderr, code := runCLI(t, dir, nil, "validate", "--config", pathB)
	if code != 0 {
		t.Fatalf("validate --config B exit code = %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	remote := planOf(stdout, fmt.Sprintf("reload plan (against the gateway running at %s):", ag.AdminAddr))
	if !slices.Equal(remote, want) {
		t.Errorf("plan against the running gateway = %q, want %q\nstdout:\n%s", remote, want, stdout)
	}

	stdout, stderr, code = runCLI(t, dir, nil, "validate", "--config", pathB, "--against", ag.ConfigPath)
	if code != 0 {
		t.Fatalf("validate --config B --against A exit code = %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	offline := planOf(stdout, fmt.Sprintf("reload plan (against %s):", ag.ConfigPath))
	if !slices.Equal(offline, want) {
		t.Errorf("plan against A = %q, want %q\nstdout:\n%s", offline, want, stdout)
	}

	// validate is a dry run: the gateway still serves A.
	if r := ag.Get(t, "plan.test", "/b"); r.Status != http.StatusNotFound {
		t.Errorf("GET /b after validate = %d, want 404 (validate must not reload)", r.Status)
	}
	if n := len(logsWith(ag.Proc, "config reloaded")); n != 0 {
		t.Errorf("the gateway logged %d reloads after validate, want none", n)
	}
}

// TestReloadInFlightFinish holds requests at their backends while a reload
// moves one route to another pool and removes another route: the held
// requests finish on the config they started on (200 from the old
// backend, full body), and new requests follow the new config.
func TestReloadInFlightFinish(t *testing.T) {
	t.Parallel()
	const held = 6
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	arrived := make(chan string, 2*held)
	slow := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			arrived <- r.URL.Path
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, name+":"+r.URL.Path+":"+strings.Repeat("x", 32<<10))
		}
	}
	oldBE, newBE := newBackend(t, slow("old")), newBackend(t, echoHandler("new"))
	cfg := func(moved string, withGone bool) string {
		gone := ""
		if withGone {
			gone = fmt.Sprintf("      - path: /gone/\n        upstream: [%s]\n", oldBE.URL)
		}
		return fmt.Sprintf(`
upstreams:
  app:
    backends: [{url: %s}]
sites:
  - hosts: [inflight.test]
    tls: off
    routes:
      - path: /moved/
        upstream: app
%s`, moved, gone)
	}
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: cfg(oldBE.URL, true)})
	t.Cleanup(releaseAll) // before the gateway stops
	global := configGlobal(t, ag.ConfigPath)

	type result struct {
		path, body string
		status     int
		err        error
	}
	results := make(chan result, 2*held)
	c := newClient()
	t.Cleanup(c.CloseIdleConnections)
	for i := range held {
		path := fmt.Sprintf("/moved/%d", i)
		if i%2 == 1 {
			path = fmt.Sprintf("/gone/%d", i)
		}
		go func() {
			status, body, err := fetch(c, "inflight.test", ag.BaseURL+path, nil)
			results <- result{path, body, status, err}
		}()
	}
	for range held {
		select {
		case <-arrived:
		case r := <-results:
			t.Fatalf("GET %s finished before reaching its backend: %d %v", r.path, r.status, r.err)
		case <-time.After(15 * time.Second):
			t.Fatal("held requests never reached the backend (hang guard)")
		}
	}

	writeConfig(t, ag.ConfigPath, global, cfg(newBE.URL, false))
	if status, out := ag.reload(t); status != http.StatusOK || out["reloaded"] != true {
		t.Fatalf("POST /reload = %d %v, want 200", status, out)
	}
	if e := decodeEcho(t, ag.Get(t, "inflight.test", "/moved/after")); e.Backend != "new" {
		t.Errorf("a request after the reload went to %q, want the new pool's backend", e.Backend)
	}
	if r := ag.Get(t, "inflight.test", "/gone/after"); r.Status != http.StatusNotFound {
		t.Errorf("GET /gone/after the reload = %d, want 404", r.Status)
	}
	select {
	case r := <-results:
		t.Fatalf("GET %s ended while its backend still held it: %d %v", r.path, r.status, r.err)
	default:
	}

	releaseAll()
	for range held {
		select {
		case r := <-results:
			want := "old:" + r.path + ":" + strings.Repeat("x", 32<<10)
			if r.err != nil || r.status != http.StatusOK || r.body != want {
				t.Errorf("GET %s in flight across the reload: %d, %d body bytes, err %v; want 200 from the old backend with the full body",
					r.path, r.status, len(r.body), r.err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("held requests did not finish after release (hang guard)")
		}
	}
}

// TestReloadAdminPublicOff turns admin_public off by a reload on a gateway
// whose admin API is on loopback with admin_public: true (so it answers
// requests for any Host). The reload must either be refused as needing a
// restart (409, the running config still says admin_public: true) or take
// effect: the admin API then refuses a request for a foreign Host (the
// DNS-rebinding guard) with 403. Reporting success while the guard stays
// off leaves the operator believing the API is protected.
func TestReloadAdminPublicOff(t *testing.T) {
	t.Parallel()
	body := respondSite("x\n")
	ag := startAdminGatewayCfg(t, GatewayConfig{Global: "admin_public: true", Body: body})
	foreign := func() Response {
		t.Helper()
		return doRequest(t, ag.admin, "rebind.example", http.MethodGet, ag.AdminURL+"/config", nil, nil)
	}
	if r := foreign(); r.Status != http.StatusOK {
		t.Fatalf("with admin_public: true, GET /config for Host rebind.example = %d, want 200", r.Status)
	}
	global := configGlobal(t, ag.ConfigPath)
	if !strings.Contains(global, "  admin_public: true\n") {
		t.Fatalf("no admin_public line in the global block:\n%s", global)
	}
	writeConfig(t, ag.ConfigPath, strings.Replace(global, "  admin_public: true\n", "", 1), body)
	status, out := ag.reload(t)
	switch status {
	case http.StatusConflict: // refused: the running config must say so
		var cfg struct {
			Global struct {
				AdminPublic bool `json:"admin_public"`
			} `json:"global"`
		}
		r := ag.Admin(t, http.MethodGet, "/config")
		if err := json.Unmarshal([]byte(r.Body), &cfg); err != nil || !cfg.Global.AdminPublic {
			t.Errorf("reload refused, but GET /config no longer says admin_public: true: %s", r.Body)
		}
	case http.StatusOK:
		if r := foreign(); r.Status != http.StatusForbidden {
			t.Errorf("POST /reload turning admin_public off answered %d %v, yet the admin API still answers %d "+
				"(want 403) for Host rebind.example: the reload reported success but the guard was not applied",
				status, out, r.Status)
		}
	default:
		t.Errorf("POST /reload turning admin_public off = %d %v, want 200 (applied) or 409 (needs a restart)", status, out)
	}
}

// writeSelfSigned writes a self-signed ECDSA certificate for host with
// common name cn, and its key, into dir as cn.crt and cn.key.
func writeSelfSigned(t testing.TB, dir, cn, host string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestReloadManualCertFiles reloads a config that points a
// tls: {cert, key} site at other files. The reload must either be refused
// as needing a restart (409, the old certificate keeps serving) or be
// applied (the new certificate is served); reporting success while the old
// certificate keeps serving is a half-applied reload, which Reload promises
// never to do. The plan must not call it "no changes" either.
func TestReloadManualCertFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certA, keyA := writeSelfSigned(t, dir, "cert-a", "cert.test")
	certB, keyB := writeSelfSigned(t, dir, "cert-b", "cert.test")
	body := func(cert, key string) string {
		return fmt.Sprintf(`
sites:
  - hosts: [cert.test]
    tls: {cert: %q, key: %q}
    routes:
      - path: /
        respond: {status: 200, body: "x\n"}
`, cert, key)
	}
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: body(certA, keyA)})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", ag.HTTPSPort)
	served := func() string {
		t.Helper()
		var cn string
		pollUntil(t, 10*time.Second, "a TLS handshake for cert.test", func() (bool, string) {
			cs, err := handshake(httpsAddr, "cert.test", nil, 2*time.Second)
			if err != nil {
				return false, err.Error()
			}
			cn = cs.PeerCertificates[0].Subject.CommonName
			return true, ""
		})
		return cn
	}
	if cn := served(); cn != "cert-a" {
		t.Fatalf("before the reload the gateway serves %q, want cert-a", cn)
	}
	global := configGlobal(t, ag.ConfigPath)
	pathB := filepath.Join(dir, "b.yaml")
	writeConfig(t, pathB, global, body(certB, keyB))
	stdout, stderr, code := runCLI(t, dir, nil, "validate", "--config", pathB)
	if code != 0 || strings.Contains(stdout, "no changes") {
		t.Errorf("validate of the new cert/key files against the running gateway (exit %d) says:\n%s%s", code, stdout, stderr)
	}

	writeConfig(t, ag.ConfigPath, global, body(certB, keyB))
	status, out := ag.reload(t)
	switch status {
	case http.StatusConflict:
		if cn := served(); cn != "cert-a" {
			t.Errorf("reload refused, but the gateway now serves %q, want cert-a", cn)
		}
	case http.StatusOK:
		deadline := time.Now().Add(5 * time.Second)
		for {
			cn := served()
			if cn == "cert-b" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("POST /reload pointing the site at cert-b's files answered %d %v, but 5s later the gateway "+
					"still serves %q: the reload reported success without applying the new certificate", status, out, cn)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	default:
		t.Errorf("POST /reload with new cert/key files = %d %v, want 200 (applied) or 409 (needs a restart)", status, out)
	}
}
