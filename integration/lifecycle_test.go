package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// respondSite serves body on every path of any host.
func respondSite(body string) string {
	return fmt.Sprintf(`
sites:
  - hosts: ["*"]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: %q}
`, body)
}

// TestGracefulShutdown sends SIGTERM while a request is held at the backend:
// the listener must close while the request is still in flight, the request
// must then complete with its full body, and the process must exit 0. The
// backend is released only after both facts were observed, so the order of
// events, not the clock, decides the outcome; the deadlines below are hang
// guards only.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	arrived := make(chan struct{}, 1)                         // the backend has the request
	release := make(chan struct{})                            // closed by the test to let it answer
	var releaseOnce sync.Once
	releaseBackend := func() { releaseOnce.Do(func() { close(release) }) }
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
		w.Write(payload)
	})
	g := startGateway(t, GatewayConfig{
		// Far longer than any hang guard here: the drain must never be cut
		// short by the timeout in this test.
		Global: "shutdown_timeout: 60s",
		Body: fmt.Sprintf(`
sites:
  - hosts: [slow.test]
    tls: off
    routes:
      - path: /
        upstream: [%s]
`, be.URL),
	})
	// Registered after startGateway, so it runs before the gateway is
	// stopped: a test that failed early must not leave the drain waiting.
	t.Cleanup(releaseBackend)

	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", g.BaseURL+"/slow", nil)
		req.Host = "slow.test"
		resp, err := g.Client.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: b, err: err}
	}()

	// (a) The request is in flight at the backend.
	select {
	case <-arrived:
	case r := <-done:
		t.Fatalf("request finished before reaching the backend: status %d, err %v", r.status, r.err)
	case <-time.After(15 * time.Second):
		t.Fatal("request never reached the backend (hang guard)")
	}

	// (b) SIGTERM was sent and http_port refuses new connections.
	g.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second) // hang guard
	for {
		c, err := net.DialTimeout("tcp", g.Addr, 2*time.Second)
		if err == nil {
			c.Close() // the listener is not closed yet
		} else if isRefused(err) {
			break
		} else if !errors.Is(err, syscall.ECONNRESET) {
			// A reset means the listener closed under a queued connection: go on.
			t.Fatalf("dial after SIGTERM: %v, want connection refused", err)
		}
		if g.Exited() {
			t.Fatalf("gatehouse exited (code %d) with a request in flight", g.Cmd.ProcessState.ExitCode())
		}
		if time.Now().After(deadline) {
			t.Fatal("http_port never started refusing connections after SIGTERM (hang guard)")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The backend still holds the request, so nothing can have answered it.
	select {
	case r := <-done:
		t.Fatalf("in-flight request ended while the backend still held it: status %d, %d body bytes, err %v",
			r.status, len(r.body), r.err)
	default:
	}
	if g.Exited() {
		t.Fatalf("gatehouse exited (code %d) with a request in flight", g.Cmd.ProcessState.ExitCode())
	}

	releaseBackend()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || !bytes.Equal(r.body, payload) {
			t.Errorf("in-flight request: status %d, %d of %d body bytes, err %v; want 200 and the full body",
				r.status, len(r.body), len(payload), r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("in-flight request did not finish after the backend was released (hang guard)")
	}
	code, ok := g.WaitExit(15 * time.Second)
	switch {
	case !ok:
		t.Fatal("gatehouse still running after the drained request completed (hang guard 15s)")
	case code != 0:
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestStopSignals checks that SIGTERM and SIGINT on an idle gateway exit 0
// and close the port.
func TestStopSignals(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, GatewayConfig{Body: respondSite("up\n")})
			if r := g.Get(t, "any.test", "/"); r.Status != 200 || r.Body != "up\n" {
				t.Fatalf("GET / = %d %q", r.Status, r.Body)
			}
			g.Client.CloseIdleConnections()
			g.Signal(sig)
			code, ok := g.WaitExit(15 * time.Second)
			if !ok {
				t.Fatalf("still running 15s after %v (hang guard)", sig)
			}
			if code != 0 {
				t.Errorf("exit code after %v = %d, want 0", sig, code)
			}
			if c, err := net.DialTimeout("tcp", g.Addr, time.Second); err == nil {
				c.Close()
				t.Errorf("http_port accepts connections after exit")
			}
		})
	}
}

// TestConfigSources checks every documented way of naming the config file.
func TestConfigSources(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args func(string) []string
		env  func(string) []string
	}{
		{"--config", func(p string) []string { return []string{"run", "--config", p} }, nil},
		{"-config", func(p string) []string { return []string{"run", "-config", p} }, nil},
		{"--config=", func(p string) []string { return []string{"run", "--config=" + p} }, nil},
		{"GATEHOUSE_CONFIG", func(string) []string { return []string{"run"} },
			func(p string) []string { return []string{"GATEHOUSE_CONFIG=" + p} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := GatewayConfig{Body: respondSite("from " + c.name + "\n"), Args: c.args}
			if c.env != nil {
				// The path is only known once written: write it first, then start.
				var addr string
				startServing(t, func() ([]string, []string, string) {
					path, _, httpPort, _ := writeGatewayConfig(t, cfg)
					addr = fmt.Sprintf("127.0.0.1:%d", httpPort)
					return c.env(path), c.args(path), addr
				})
				r := doRequest(t, newClient(), "x.test", "GET", "http://"+addr+"/", nil, nil)
				if r.Status != 200 || r.Body != "from "+c.name+"\n" {
					t.Errorf("GET / = %d %q", r.Status, r.Body)
				}
				return
			}
			g := startGateway(t, cfg)
			if r := g.Get(t, "x.test", "/"); r.Status != 200 || r.Body != "from "+c.name+"\n" {
				t.Errorf("GET / = %d %q", r.Status, r.Body)
			}
		})
	}
}

// TestReloadOnSIGHUP checks that SIGHUP applies an edited config, and that
// a broken edit is reported and leaves the running config in place.
func TestReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	g := startGateway(t, GatewayConfig{Body: respondSite("v1\n")})
	rewrite := func(body string) {
		t.Helper()
		text := globalBlock(g.HTTPPort, g.HTTPSPort, g.DataDir, "") + strings.TrimLeft(body, "\n")
		if err := os.WriteFile(g.ConfigPath, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitBody := func(want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second) // hang guard
		for {
			r := g.Get(t, "x.test", "/")
			if r.Status == 200 && r.Body == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after SIGHUP GET / = %d %q, want 200 %q (gave up after 20s)", r.Status, r.Body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitBody("v1\n")

	rewrite(respondSite("v2\n"))
	g.Signal(syscall.SIGHUP)
	waitBody("v2\n")

	before, _ := g.LogLines()
	rewrite(respondSite("v3\n") + "no_such_section: true\n")
	g.Signal(syscall.SIGHUP)
	g.WaitLog(20*time.Second, "at level WARN or ERROR after a broken reload", func(m map[string]any) bool {
		lvl, _ := m["level"].(string)
		return (lvl == "ERROR" || lvl == "WARN") && !containsLine(before, m)
	})
	if g.Exited() {
		t.Fatalf("gatehouse exited after a SIGHUP with a broken config")
	}
	if r := g.Get(t, "x.test", "/"); r.Status != 200 || r.Body != "v2\n" {
		t.Errorf("after a broken reload GET / = %d %q, want the previous config's 200 \"v2\\n\"", r.Status, r.Body)
	}

	rewrite(respondSite("v4\n"))
	g.Signal(syscall.SIGHUP)
	waitBody("v4\n")
}

func containsLine(lines []map[string]any, m map[string]any) bool {
	for _, l := range lines {
		if fmt.Sprint(l) == fmt.Sprint(m) {
			return true
		}
	}
	return false
}

// TestRunRejectsBadConfig checks that `gatehouse run` with a broken config
// exits 1, names the problems, and never opens http_port.
func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	bc := writeBadConfig(t)
	addr := fmt.Sprintf("127.0.0.1:%d", bc.httpPort)
	p := startProc(t, nil, "run", "--config", bc.path)
	deadline := time.Now().Add(20 * time.Second) // hang guard
	for !p.Exited() {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("gatehouse run opened http_port %s with a bad config", addr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("gatehouse run with a bad config still running after 20s (hang guard)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, _ := p.WaitExit(0)
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	out := p.Stdout.String() + p.Stderr.String()
	for _, e := range bc.errs {
		if want := fmt.Sprintf("%s:%d:", bc.path, e.line); !strings.Contains(out, want) {
			t.Errorf("output does not name %s (%s); output:\n%s", want, e.what, out)
		}
	}
}
