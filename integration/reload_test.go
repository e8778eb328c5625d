package integration

// Live reloads of the running gateway: SIGHUP and the admin API's POST
// /reload under load, a broken file that must leave the running config in
// place, and requests in flight across a reload. The WebSocket and
// shutdown-under-load tests are in reload_ws_test.go; `run --watch`,
// `validate`'s reload plan and reloads of settings built once at start are
// in reload_cli_test.go.
//
// Helpers shared with the other reload files, metrics_test.go and
// access_test.go live here too: startAdminGatewayCfg (an admin-enabled
// gateway from a full GatewayConfig), configGlobal / writeConfig (rewrite
// the body of a config while keeping its global: block, so no reload ever
// needs a restart), and fetch (a request that returns its error instead of
// failing the test, for goroutines).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ---------------------------------------------------------------- helpers

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
