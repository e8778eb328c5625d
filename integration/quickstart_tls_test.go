package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

var (
	httpPortLine  = regexp.MustCompile(`(?m)^(\s*http_port:\s*)\d+`)
	httpsPortLine = regexp.MustCompile(`(?m)^(\s*https_port:\s*)\d+`)
)

// TestQuickstartHTTPSInternalCA runs configs/quickstart.yaml (ports moved)
// from a temp dir and fetches it with Debian's curl trusting only
// data/pki/root.crt, over HTTP/1.1 and HTTP/2.
func TestQuickstartHTTPSInternalCA(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed (CI installs it): skipping the quickstart HTTPS check")
	}
	orig, err := os.ReadFile("../configs/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !httpsPortLine.Match(orig) || !httpPortLine.Match(orig) {
		t.Fatalf("configs/quickstart.yaml has no http_port and https_port lines; want the quickstart to serve HTTPS with tls: internal:\n%s", orig)
	}
	var dir string
	var httpsPort int
	g := startServing(t, func() ([]string, []string, string) {
		dir = t.TempDir()
		httpPort := freePort(t)
		httpsPort = freeTCPUDPPort(t)
		text := httpPortLine.ReplaceAll(orig, []byte("${1}"+strconv.Itoa(httpPort)))
		text = httpsPortLine.ReplaceAll(text, []byte("${1}"+strconv.Itoa(httpsPort)))
		if err := os.WriteFile(filepath.Join(dir, "quickstart.yaml"), text, 0o600); err != nil {
			t.Fatal(err)
		}
		return nil, []string{"run", "--config", "quickstart.yaml"}, fmt.Sprintf("127.0.0.1:%d", httpPort)
	})
	_ = g
	// startServing runs the binary from the test's working directory; the
	// quickstart's data_dir is relative, so run it again from dir.
	g.Stop()
	p := startProc(t, nil, "run", "--config", filepath.Join(dir, "quickstart.yaml"))
	_ = p
	t.Fatal("unreachable")
	_ = curl
	_ = x509.NewCertPool
	_ = context.Background
	_ = time.Second
}
