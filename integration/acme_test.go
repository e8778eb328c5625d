package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// siteA is a tls: auto site answering "hello a\n".
const siteA = `
  - hosts: [a.test]
    tls: auto
    routes: [{path: /, respond: {body: "hello a\n"}}]
`

// checkServesA fetches https://a.test/ over HTTP/1.1, HTTP/2 and HTTP/3,
// trusting only roots, and checks the body and the Alt-Svc header.
func checkServesA(t *testing.T, g *tlsGateway, p *pebbleCA) {
	t.Helper()
	url := fmt.Sprintf("https://a.test:%d/", g.HTTPSPort)
	t.Run("http1.1", func(t *testing.T) {
		tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, false)
		defer tr.CloseIdleConnections()
		resp, body := httpsGet(t, tr, url, "")
		if resp.StatusCode != http.StatusOK || body != "hello a\n" || resp.ProtoMajor != 1 {
			t.Errorf("h1 GET %s = %d %q over %s, want 200 %q over HTTP/1.1", url, resp.StatusCode, body, resp.Proto, "hello a\n")
		}
		checkAltSvc(t, resp, g.HTTPSPort)
	})
	t.Run("http2", func(t *testing.T) {
		tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, true)
		defer tr.CloseIdleConnections()
		resp, body := httpsGet(t, tr, url, "")
		if resp.ProtoMajor != 2 {
			t.Errorf("h2 GET %s negotiated %s, want HTTP/2 through ALPN", url, resp.Proto)
		}
		if resp.StatusCode != http.StatusOK || body != "hello a\n" {
			t.Errorf("h2 GET %s = %d %q, want 200 %q", url, resp.StatusCode, body, "hello a\n")
		}
		checkAltSvc(t, resp, g.HTTPSPort)
	})
	t.Run("http3", func(t *testing.T) {
		resp, body := httpsGet(t, h3Transport(t, g.HTTPSPort, "a.test", p.Roots), url, "")
		if resp.StatusCode != http.StatusOK || body != "hello a\n" || resp.ProtoMajor != 3 {
			t.Errorf("h3 GET %s = %d %q over %s, want 200 %q over HTTP/3", url, resp.StatusCode, body, resp.Proto, "hello a\n")
		}
	})
}

// checkAltSvc asserts resp carries exactly one Alt-Svc value, advertising
// h3 on port.
func checkAltSvc(t *testing.T, resp *http.Response, port int) {
	t.Helper()
	want := fmt.Sprintf(`h3=":%d"`, port)
	vals := resp.Header.Values("Alt-Svc")
	if len(vals) != 1 {
		t.Errorf("Alt-Svc header values = %q, want exactly one containing %s", vals, want)
		return
	}
	if !strings.Contains(vals[0], want) || strings.Count(vals[0], "h3=") != 1 {
		t.Errorf("Alt-Svc = %q, want one h3 entry %s", vals[0], want)
	}
}

// obtainA waits for the gateway to serve a Pebble-issued certificate for
// a.test, checks that only the wanted challenge type was used, and returns
// the certificate's serial.
func obtainA(t *testing.T, g *tlsGateway, p *pebbleCA, wantChallenge string) (serial string) {
	t.Helper()
	cs := waitCert(t, g, "a.test", p.Roots)
	leaf := checkChain(t, cs, "a.test", p.Root)
	if got := p.OrdersFor("a.test"); got < 1 {
		t.Errorf("Pebble saw %d orders for a.test, want at least 1", got)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("a.test certificate key is %T (%s), want ECDSA P-256 by default", leaf.PublicKey, leaf.PublicKeyAlgorithm)
	}
	if got := p.ChallengeTypes(); !slices.Equal(got, []string{wantChallenge}) {
		t.Errorf("challenge types answered = %v, want only [%s] (acme.challenges)", got, wantChallenge)
	}
	return leaf.SerialNumber.String()
}

// TestACMEHTTP01 obtains a certificate through HTTP-01 against Pebble and
// serves it over h1, h2 and h3 with one Alt-Svc (a backend's own Alt-Svc is
// replaced); plain HTTP redirects to HTTPS keeping path and query.
func TestACMEHTTP01(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", `h3=":1"; ma=60`)
		io.WriteString(w, "from backend\n")
	})
	start := time.Now()
	g, p := startACMEGateway(t, "[http-01]", "", "sites:"+siteA+fmt.Sprintf(`
  - hosts: [be.a.test]
    tls: auto
    routes: [{path: /, upstream: [%s]}]
`, be.URL))
	t.Logf("http_port accepted %v after start", time.Since(start))

	t.Run("redirect", func(t *testing.T) {
		// Needs no certificate, so it runs while issuance may be under way.
		r := doRequest(t, newClient(), fmt.Sprintf("a.test:%d", g.HTTPPort), http.MethodGet,
			"http://"+g.HTTPAddr()+"/x/y?q=1&r=2", nil, nil)
		want := fmt.Sprintf("https://a.test:%d/x/y?q=1&r=2", g.HTTPSPort)
		if r.Status != http.StatusPermanentRedirect || r.Header.Get("Location") != want {
			t.Errorf("GET http://a.test:%d/x/y?q=1&r=2 = %d Location %q, want 308 Location %q",
				g.HTTPPort, r.Status, r.Header.Get("Location"), want)
		}
	})
	obtainA(t, g, p, "http-01")
	checkServesA(t, g, p)
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		cfg := &tls.Config{ServerName: "a.test", RootCAs: p.Roots, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		if c, err := d.Dial("tcp", g.HTTPSAddr()); err == nil {
			c.Close()
			t.Errorf("a TLS 1.1 handshake succeeded, want TLS 1.2 or later only")
		}
	})
	t.Run("backend Alt-Svc replaced", func(t *testing.T) {
		waitCert(t, g, "be.a.test", p.Roots)
		for _, h2 := range []bool{false, true} {
			tr := tlsTransport(g.HTTPSPort, "be.a.test", p.Roots, h2)
			resp, body := httpsGet(t, tr, fmt.Sprintf("https://be.a.test:%d/", g.HTTPSPort), "")
			tr.CloseIdleConnections()
			if resp.StatusCode != http.StatusOK || body != "from backend\n" {
				t.Errorf("GET be.a.test over %s = %d %q, want 200 from the backend", resp.Proto, resp.StatusCode, body)
			}
			checkAltSvc(t, resp, g.HTTPSPort)
		}
	})
}

// TestACMETLSALPN01 obtains a certificate through TLS-ALPN-01 only.
func TestACMETLSALPN01(t *testing.T) {
	t.Parallel()
	g, p := startACMEGateway(t, "[tls-alpn-01]", "", "sites:"+siteA)
	obtainA(t, g, p, "tls-alpn-01")
	checkServesA(t, g, p)
}

// TestACMERestartKeepsCertificate restarts on the same data_dir: the stored
// certificate is served and Pebble sees no new order.
func TestACMERestartKeepsCertificate(t *testing.T) {
	t.Parallel()
	g, p := startACMEGateway(t, "[http-01]", "", "sites:"+siteA)
	first := obtainA(t, g, p, "http-01")
	orders := p.Orders()

	g.Restart()
	cs := waitCert(t, g, "a.test", p.Roots)
	leaf := checkChain(t, cs, "a.test", p.Root)
	if got := leaf.SerialNumber.String(); got != first {
		t.Errorf("after restart the certificate serial is %s, want the stored %s", got, first)
	}
	tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, false)
	defer tr.CloseIdleConnections()
	if resp, body := httpsGet(t, tr, fmt.Sprintf("https://a.test:%d/", g.HTTPSPort), ""); resp.StatusCode != 200 || body != "hello a\n" {
		t.Errorf("after restart GET = %d %q, want 200 %q", resp.StatusCode, body, "hello a\n")
	}
	if got := p.Orders(); got != orders {
		t.Errorf("Pebble saw %d new orders after the restart, want 0 (names ordered: %v)", got-orders, p.OrderedNames())
	}
	checkDataDirPerms(t, g.DataDir)
}

// checkDataDirPerms asserts data_dir is 0700 and no private key is readable
// by group or others.
func checkDataDirPerms(t *testing.T, dataDir string) {
	t.Helper()
	st, err := os.Stat(dataDir)
	if err != nil {
		t.Fatalf("data_dir: %v", err)
	}
	if perm := st.Mode().Perm(); perm != 0o700 {
		t.Errorf("data_dir %s has mode %#o, want 0700", dataDir, perm)
	}
	keys := 0
	filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".key") {
			return err
		}
		keys++
		if info, err := d.Info(); err == nil && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("private key %s has mode %#o, want no group/other access", path, info.Mode().Perm())
		}
		return nil
	})
	if keys == 0 {
		t.Errorf("no *.key file under data_dir %s: where is the certificate's private key stored?", dataDir)
	}
}

// TestACMECADownAtStartup stops Pebble, then restarts the gateway on the same
// data_dir with an extra site: it starts, serves the stored certificate, and
// the name without a certificate fails its handshake without harm.
func TestACMECADownAtStartup(t *testing.T) {
	t.Parallel()
	g, p := startACMEGateway(t, "[http-01]", "", "sites:"+siteA)
	first := obtainA(t, g, p, "http-01")

	g.Stop()
	p.Close()
	g.WriteSites("sites:" + siteA + `
  - hosts: [b.test]
    tls: auto
    routes: [{path: /, respond: {body: "hello b\n"}}]
`)
	start := time.Now()
	g.Restart()
	t.Logf("with the CA down, http_port accepted %v after start", time.Since(start))

	cs := waitCert(t, g, "a.test", p.Roots)
	leaf := checkChain(t, cs, "a.test", p.Root)
	if got := leaf.SerialNumber.String(); got != first {
		t.Errorf("with the CA down the certificate serial is %s, want the stored %s", got, first)
	}
	tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, true)
	defer tr.CloseIdleConnections()
	if resp, body := httpsGet(t, tr, fmt.Sprintf("https://a.test:%d/", g.HTTPSPort), ""); resp.StatusCode != 200 || body != "hello a\n" {
		t.Errorf("with the CA down GET a.test = %d %q, want 200 %q", resp.StatusCode, body, "hello a\n")
	}
	for range 3 {
		if cs, err := handshake(g.HTTPSAddr(), "b.test", nil, 5*time.Second); err == nil {
			t.Errorf("handshake for b.test (no certificate, CA down) succeeded with a certificate for %v; want it to fail",
				cs.PeerCertificates[0].DNSNames)
		}
	}
	// The outage is logged, naming the CA or the name it could not get.
	caHost := strings.TrimSuffix(strings.TrimPrefix(p.DirURL, "https://"), "/dir")
	g.WaitLog(15*time.Second, "at WARN or ERROR about the unreachable CA", func(m map[string]any) bool {
		lvl, _ := m["level"].(string)
		if lvl != "WARN" && lvl != "ERROR" {
			return false
		}
		b, _ := json.Marshal(m)
		return strings.Contains(string(b), caHost) || strings.Contains(string(b), "b.test")
	})
	// The process is still up and still serving a.test.
	if g.Exited() {
		t.Fatalf("gateway exited (code %d) with the CA down", g.Cmd.ProcessState.ExitCode())
	}
	if _, err := handshake(g.HTTPSAddr(), "a.test", p.Roots, 5*time.Second); err != nil {
		t.Errorf("after the failed b.test handshakes, a.test handshake failed: %v", err)
	}
	if r := doRequest(t, newClient(), "a.test", http.MethodGet, "http://"+g.HTTPAddr()+"/", nil, nil); r.Status != http.StatusPermanentRedirect {
		t.Errorf("with the CA down, plain HTTP for a.test = %d, want 308", r.Status)
	}
}
