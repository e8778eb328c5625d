package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	httpPortLine        = regexp.MustCompile(`(?m)^(\s*http_port:\s*)\d+`)
	httpsPortLine       = regexp.MustCompile(`(?m)^(\s*https_port:\s*)\d+`)
	quickstartAdminLine = regexp.MustCompile(`(?m)^(\s*admin:\s*127\.0\.0\.1:)\d+`)
)

// TestQuickstartHTTPSInternalCA runs configs/quickstart.yaml (ports moved to
// free ones) from a temp dir and fetches it with curl trusting only
// data/pki/root.crt, over HTTP/1.1 and HTTP/2.
func TestQuickstartHTTPSInternalCA(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed (CI installs it): skipping the quickstart-over-HTTPS check")
	}
	orig, err := os.ReadFile("../configs/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !httpsPortLine.Match(orig) || !httpPortLine.Match(orig) {
		t.Fatalf("configs/quickstart.yaml has no http_port and https_port lines; want the quickstart to serve HTTPS with tls: internal:\n%s", orig)
	}
	var dir string
	var httpsPort, adminPort int
	g := startServingIn(t, func() (string, []string, []string, string) {
		dir = t.TempDir()
		httpPort := freePort(t)
		httpsPort = freeTCPUDPPort(t)
		text := httpPortLine.ReplaceAll(orig, []byte("${1}"+strconv.Itoa(httpPort)))
		text = httpsPortLine.ReplaceAll(text, []byte("${1}"+strconv.Itoa(httpsPort)))
		adminPort = freePort(t)
		text = quickstartAdminLine.ReplaceAll(text, []byte("${1}"+strconv.Itoa(adminPort)))
		if err := os.WriteFile(filepath.Join(dir, "quickstart.yaml"), text, 0o600); err != nil {
			t.Fatal(err)
		}
		return dir, nil, []string{"run", "--config", "quickstart.yaml"}, fmt.Sprintf("127.0.0.1:%d", httpPort)
	})

	// Wait for the internal CA's root and a handshake that verifies with it.
	rootPath := filepath.Join(dir, "data", "pki", "root.crt")
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	deadline := time.Now().Add(certWait)
	for {
		var err error
		pool := x509.NewCertPool()
		if pem, rerr := os.ReadFile(rootPath); rerr != nil {
			err = rerr
		} else if !pool.AppendCertsFromPEM(pem) {
			err = fmt.Errorf("%s holds no PEM certificate", rootPath)
		} else if _, err = handshake(httpsAddr, "localhost", pool, 5*time.Second); err == nil {
			break
		}
		if g.Exited() {
			t.Fatalf("quickstart gateway exited (code %d) before serving HTTPS: %v", g.Cmd.ProcessState.ExitCode(), err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("quickstart: no verified handshake for localhost on %s within %v: %v", httpsAddr, certWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, c := range []struct{ flag, version string }{{"--http1.1", "1.1"}, {"--http2", "2"}} {
		t.Run(c.flag, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			url := fmt.Sprintf("https://localhost:%d/", httpsPort)
			cmd := exec.CommandContext(ctx, curl, "-sS", "--noproxy", "*", "--max-time", "15",
				"--cacert", "data/pki/root.crt",
				"--resolve", fmt.Sprintf("localhost:%d:127.0.0.1", httpsPort),
				c.flag, "-w", "%{http_version}", url)
			cmd.Dir = dir
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("curl %s --cacert data/pki/root.crt %s: %v\nstderr: %s", c.flag, url, err, stderr.String())
			}
			want := "hello from gatehouse\n" + c.version
			if string(out) != want {
				t.Errorf("curl %s %s printed %q (body + %%{http_version}), want %q", c.flag, url, out, want)
			}
		})
	}

	t.Run("admin", func(t *testing.T) {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", adminPort))
		if err != nil {
			t.Fatalf("quickstart admin API: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.StatusCode != 200 || string(body) != "ok\n" {
			t.Errorf("admin /healthz = %d %q, want 200 \"ok\\n\"", res.StatusCode, body)
		}
	})
}
