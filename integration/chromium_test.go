package integration

// A real browser through the gateway: headless Chromium (Debian's
// chromium) loads a page over HTTPS from Gatehouse's internal CA and talks
// WebSocket (wss://) through Gatehouse to a coder/websocket echo server.
// The recipe is /work/shared/TESTING.md's.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const chromiumBin = "/usr/lib/chromium/chromium"

// browserTools returns the paths of chromium and certutil; when one is
// missing it skips the test, except in CI (CI=true) where it fails.
func browserTools(t *testing.T) (chromium, certutil string) {
	t.Helper()
	var missing []string
	if fi, err := os.Stat(chromiumBin); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, chromiumBin+" (Debian package chromium)")
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		missing = append(missing, "certutil (Debian package libnss3-tools)")
	}
	if len(missing) > 0 {
		msg := "missing for the browser test: " + strings.Join(missing, " and ")
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: .ci/run should have installed it)", msg)
		}
		t.Skipf("%s; skipping (.ci/run installs chromium and libnss3-tools in CI)", msg)
	}
	return chromiumBin, certutil
}

// wsPage is the page Gatehouse serves at /: it opens a WebSocket to /ws,
// sends "hello" and logs the echo with the page's own protocol.
const wsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>gatehouse websocket test</title></head>
<body><script>
const nav = performance.getEntriesByType('navigation')[0];
const proto = nav ? nav.nextHopProtocol : 'unknown';
const ws = new WebSocket('wss://localhost:%d/ws');
ws.onopen = () => ws.send('hello');
ws.onmessage = (e) => {
  console.log('WS-RESULT:' + e.data + ':' + proto);
  ws.close(1000, 'done');
};
ws.onerror = () => console.log('WS-ERROR: the WebSocket failed');
ws.onclose = (e) => console.log('WS-CLOSE:' + e.code + ':' + e.reason);
</script></body></html>
`

// TestChromiumWebSocket: headless Chromium trusting the internal CA through
// an NSS db loads https://localhost:PORT/ from Gatehouse and exchanges a
// message with the echo backend over wss:// through Gatehouse.
func TestChromiumWebSocket(t *testing.T) {
	t.Parallel()
	chromium, certutil := browserTools(t)

	be := newWSBackend(t)
	// The page names the HTTPS port, so the config is written here rather
	// than by startGateway.
	var dataDir string
	var httpsPort int
	g := startServing(t, func() (env, args []string, addr string) {
		dir := t.TempDir()
		dataDir = filepath.Join(dir, "data")
		httpPort := freePort(t)
		httpsPort = freeTCPUDPPort(t)
		page, _ := json.Marshal(fmt.Sprintf(wsPage, httpsPort))
		text := globalBlock(httpPort, httpsPort, dataDir, "") + fmt.Sprintf(`
sites:
  - hosts: [localhost]
    tls: internal
    routes:
      - path: /
        respond:
          status: 200
          body: %s
          headers: {Content-Type: "text/html; charset=utf-8", Cache-Control: no-store}
      - path: /ws
        upstream: [%s]
`, page, be.URL)
		path := filepath.Join(dir, "gatehouse.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return nil, []string{"run", "--config", path}, fmt.Sprintf("127.0.0.1:%d", httpPort)
	})
	waitInternalRoot(t, g, dataDir, fmt.Sprintf("127.0.0.1:%d", httpsPort))

	// A fresh HOME (with its NSS db trusting the root), TMPDIR and profile.
	home := t.TempDir()
	tmp := filepath.Join(home, "tmp")
	nssdb := filepath.Join(home, ".pki", "nssdb")
	profile := filepath.Join(home, "profile")
	for _, d := range []string{tmp, nssdb, profile} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "HOME="+home, "TMPDIR="+tmp)
	certutilRun := func(args ...string) {
		t.Helper()
		cmd := exec.Command(certutil, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("certutil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	certutilRun("-d", "sql:"+nssdb, "-N", "--empty-password")
	certutilRun("-d", "sql:"+nssdb, "-A", "-t", "C,,", "-n", "test", "-i", filepath.Join(dataDir, "pki", "root.crt"))

	url := fmt.Sprintf("https://localhost:%d/", httpsPort)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.Command(chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps",
		"--user-data-dir="+profile,
		"--host-resolver-rules=MAP localhost 127.0.0.1, MAP * ~NOTFOUND",
		"--enable-logging=stderr", "--v=0",
		url)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	stopped := make(chan struct{})
	stop := func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-stopped
	}
	var log []string
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() {
		cmd.Wait()
		close(stopped)
	}()
	defer stop()

	result := regexp.MustCompile(`WS-RESULT:([^:"]*):([^"\s]*)`)
	var got []string
	for got == nil {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("chromium exited before the page logged WS-RESULT; its stderr:\n%s", strings.Join(log, "\n"))
			}
			log = append(log, line)
			if m := result.FindStringSubmatch(line); m != nil {
				got = m
			} else if strings.Contains(line, "WS-ERROR") || strings.Contains(line, "WS-CLOSE") {
				t.Errorf("page: %s", line)
			}
		case <-ctx.Done():
			t.Fatalf("no WS-RESULT line from chromium within 60s; its stderr:\n%s\ngateway stderr:\n%s", strings.Join(log, "\n"), g.Stderr.String())
		}
	}
	stop()
	if got[1] != "hello" {
		t.Errorf("the page received %q over the WebSocket, want the echo \"hello\"", got[1])
	}
	pageProto := got[2]
	t.Logf("page loaded over %s; log line: %s", pageProto, got[0])
	if pageProto != "h2" && pageProto != "h3" && pageProto != "http/1.1" {
		t.Errorf("navigation nextHopProtocol = %q, want h2, h3 or http/1.1", pageProto)
	}

	// Which protocol the WebSocket itself used, from the gateway's access
	// log (informational: Chromium picks RFC 8441 over h2 when offered).
	for _, l := range accessLines(g, "/ws") {
		t.Logf("gateway access log for /ws: method %v proto %v status %v", l["method"], l["proto"], l["status"])
	}
	if n := be.Requests.Load(); n != 1 {
		t.Errorf("the echo backend received %d requests, want the page's one upgrade", n)
	}
}

// accessLines returns the gateway's request log lines for path.
func accessLines(p *Proc, path string) []map[string]any {
	objs, _ := p.LogLines()
	var out []map[string]any
	for _, o := range objs {
		if o["msg"] == "request" && o["path"] == path {
			out = append(out, o)
		}
	}
	return out
}
