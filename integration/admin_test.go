package integration

// The admin API (global.admin): /healthz, the loopback-only rule checked by
// `gatehouse validate`, and a clear failure when its port is taken. The
// helpers here (an admin-enabled gateway, admin requests, /upstreams
// decoding, polling) are shared by pools_test.go and cache_test.go.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// adminGateway is a gateway with the admin API on a loopback port.
type adminGateway struct {
	*Gateway
	AdminAddr string // 127.0.0.1:PORT
	AdminURL  string // http://127.0.0.1:PORT
	admin     *http.Client
}

// adminLine is the admin: line the harness writes from GatewayConfig.Global.
var adminLine = regexp.MustCompile(`(?m)^(\s*admin:\s*)\S+`)

// startAdminGatewayCfg starts a gateway for a full GatewayConfig (Env
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

// startAdminGateway starts a gateway whose global block has extraGlobal plus
// admin: 127.0.0.1:<free port>, and waits until the admin API answers
// /healthz. Each start attempt of the harness (it retries when it lost a
// port) gets a fresh admin port too.
func startAdminGateway(t testing.TB, extraGlobal, body string) *adminGateway {
	t.Helper()
	return startAdminGatewayCfg(t, GatewayConfig{Global: extraGlobal, Body: body})
}

// Admin sends method path (with query) to the admin API.
func (ag *adminGateway) Admin(t testing.TB, method, path string) Response {
	t.Helper()
	return doRequest(t, ag.admin, "", method, ag.AdminURL+path, nil, nil)
}

// poolStatus and backendStatus mirror the JSON of GET /upstreams.
type poolStatus struct {
	Name         string          `json:"name"`
	Balance      string          `json:"balance"`
	HealthChecks bool            `json:"health_checks"`
	Backends     []backendStatus `json:"backends"`
}

type backendStatus struct {
	URL                 string `json:"url"`
	Weight              int    `json:"weight"`
	Healthy             bool   `json:"healthy"`
	Ejected             bool   `json:"ejected"`
	Ejections           int64  `json:"ejections"`
	Inflight            int64  `json:"inflight"`
	MaxConns            int    `json:"max_conns"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
	LastCheckError      string `json:"last_check_error"`
}

// Upstreams fetches and decodes GET /upstreams.
func (ag *adminGateway) Upstreams(t testing.TB) []poolStatus {
	t.Helper()
	r := ag.Admin(t, http.MethodGet, "/upstreams")
	if r.Status != http.StatusOK {
		t.Fatalf("GET /upstreams = %d %q, want 200", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET /upstreams Content-Type = %q, want application/json", ct)
	}
	var pools []poolStatus
	if err := json.Unmarshal([]byte(r.Body), &pools); err != nil {
		t.Fatalf("GET /upstreams is not a JSON list of pools: %v\n%s", err, r.Body)
	}
	return pools
}

// Backend returns the status of the backend with url in pool, failing the
// test if either is missing.
func (ag *adminGateway) Backend(t testing.TB, pool, url string) backendStatus {
	t.Helper()
	pools := ag.Upstreams(t)
	for _, p := range pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.URL == url {
				return b
			}
		}
		t.Fatalf("/upstreams: pool %q has no backend %q: %+v", pool, url, p.Backends)
	}
	t.Fatalf("/upstreams has no pool %q: %+v", pool, pools)
	return backendStatus{}
}

// pollUntil polls cond every 25ms until it reports true, failing the test
// with cond's last explanation after d.
func pollUntil(t testing.TB, d time.Duration, what string, cond func() (ok bool, last string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v (last: %s)", what, d, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestAdminHealthz checks the admin API's liveness endpoint and that the
// admin API is only on its own listener.
func TestAdminHealthz(t *testing.T) {
	t.Parallel()
	ag := startAdminGateway(t, "", `
sites:
  - hosts: [admin.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "site\n"}
`)
	r := ag.Admin(t, http.MethodGet, "/healthz")
	if r.Status != http.StatusOK || strings.TrimSpace(r.Body) != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /healthz Content-Type = %q, want text/plain", ct)
	}
	if r := ag.Admin(t, http.MethodGet, "/no-such-endpoint"); r.Status != http.StatusNotFound {
		t.Errorf("GET /no-such-endpoint on the admin API = %d, want 404", r.Status)
	}
	// GET /cache reports the cache as enabled (global.cache.max_size
	// defaults to 256MiB).
	r = ag.Admin(t, http.MethodGet, "/cache")
	var cs struct {
		Enabled bool `json:"enabled"`
	}
	if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &cs) != nil || !cs.Enabled {
		t.Errorf("GET /cache = %d %q, want 200 with \"enabled\": true", r.Status, r.Body)
	}
	// The admin API is not served on the public HTTP port: there, /upstreams
	// for a host with no site is 404 and /healthz of a site is the site's.
	r = rawRequest(t, ag.Addr, "GET /upstreams HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	if r.Status != http.StatusNotFound {
		t.Errorf("GET /upstreams on the public HTTP port (no site) = %d %q, want 404", r.Status, r.Body)
	}
	if r := ag.Get(t, "admin.test", "/healthz"); r.Status != http.StatusOK || r.Body != "site\n" {
		t.Errorf("GET admin.test/healthz on the public port = %d %q, want the site's own 200 \"site\\n\"", r.Status, r.Body)
	}
}

// TestAdminValidatePublicAddress checks that validate rejects a
// non-loopback admin address with a FILE:LINE:COL message naming
// admin_public, and accepts it once admin_public: true is set.
func TestAdminValidatePublicAddress(t *testing.T) {
	t.Parallel()
	const sites = `
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "hi"}
`
	t.Run("rejected", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		text := globalBlock(freePort(t), freePort(t), filepath.Join(dir, "data"), "admin: 0.0.0.0:2019 # ERR x") +
			strings.TrimLeft(sites, "\n")
		path := filepath.Join(dir, "c.yaml")
		errs := writeMarked(t, path, text, map[string]string{"x": "admin_public"})
		stdout, stderr, code := runCLI(t, dir, nil, "validate", "--config", path)
		if code != 1 {
			t.Errorf("validate with admin: 0.0.0.0:2019 exit code = %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
		assertReported(t, stdout+stderr, path, errs)
	})
	t.Run("admin_public", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		text := globalBlock(freePort(t), freePort(t), filepath.Join(dir, "data"), "admin: 0.0.0.0:2019\nadmin_public: true") +
			strings.TrimLeft(sites, "\n")
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := runCLI(t, dir, nil, "validate", "--config", path)
		if code != 0 {
			t.Errorf("validate with admin: 0.0.0.0:2019 and admin_public: true exit code = %d, want 0\nstdout: %s\nstderr: %s",
				code, stdout, stderr)
		}
	})
}

// TestAdminPortInUse checks that a gateway whose admin address is taken
// exits with code 1 and a message naming the admin address, instead of
// serving without its admin API.
func TestAdminPortInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	path, _, _, _ := writeGatewayConfig(t, GatewayConfig{
		Global: "admin: " + addr,
		Body: `
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "hi"}
`,
	})
	p := startProc(t, nil, "run", "--config", path)
	code, ok := p.WaitExit(15 * time.Second)
	if !ok {
		t.Fatalf("gateway with its admin address %s taken is still running after 15s; want exit 1", addr)
	}
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	stderr := p.Stderr.String()
	if !strings.Contains(stderr, addr) || !strings.Contains(strings.ToLower(stderr), "admin") {
		t.Errorf("stderr does not name the admin address %s:\n%s", addr, stderr)
	}
	if !strings.Contains(strings.ToLower(stderr), "in use") {
		t.Errorf("stderr does not say the address is in use:\n%s", stderr)
	}
}
