package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// randomLabel returns a fresh DNS label.
func randomLabel() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "r" + hex.EncodeToString(b)
}

// TestOnDemandTLS checks on-demand issuance: an allowed name gets a
// certificate on its first handshake, a denied or unknown name fails its
// handshake without reaching the CA, and a burst of random names places no
// orders. A request whose Host names another site than the SNI gets 421.
func TestOnDemandTLS(t *testing.T) {
	t.Parallel()
	const okName, noName = "ok.ondemand.test", "no.ondemand.test"
	ask := newAskServer(t, okName)
	g, p := startACMEGateway(t, "[http-01]", ask.URL, `sites:`+siteA+`
  - hosts: ["*.ondemand.test"]
    tls: on_demand
    routes: [{path: /, respond: {body: "on demand\n"}}]
`)
	if err := g.waitListening(g.HTTPSAddr()); err != nil {
		t.Fatal(err)
	}

	// The first handshake for an allowed name obtains its certificate.
	cs, err := handshake(g.HTTPSAddr(), okName, p.Roots, certWait)
	if err != nil {
		t.Fatalf("first handshake for allowed %s: %v (ask saw it %d times; Pebble orders for it: %d)",
			okName, err, ask.Asked(okName), p.OrdersFor(okName))
	}
	okSerial := checkChain(t, cs, okName, p.Root).SerialNumber.String()
	if n := p.OrdersFor(okName); n != 1 {
		t.Errorf("Pebble saw %d orders for %s, want exactly 1", n, okName)
	}
	if n := ask.Asked(okName); n != 1 {
		t.Errorf("the ask endpoint was asked %d times about %s, want 1", n, okName)
	}
	cs, err = handshake(g.HTTPSAddr(), okName, p.Roots, 10*time.Second)
	if err != nil {
		t.Fatalf("second handshake for %s: %v", okName, err)
	}
	if got := cs.PeerCertificates[0].SerialNumber.String(); got != okSerial {
		t.Errorf("second handshake for %s got serial %s, want the same certificate %s", okName, got, okSerial)
	}
	tr := tlsTransport(g.HTTPSPort, okName, p.Roots, true)
	defer tr.CloseIdleConnections()
	if resp, body := httpsGet(t, tr, fmt.Sprintf("https://%s:%d/", okName, g.HTTPSPort), ""); resp.StatusCode != 200 || body != "on demand\n" {
		t.Errorf("GET https://%s/ = %d %q, want 200 %q", okName, resp.StatusCode, body, "on demand\n")
	}

	// A denied name: the gateway asks, refuses the handshake, orders nothing.
	if cs, err := handshake(g.HTTPSAddr(), noName, nil, 10*time.Second); err == nil {
		t.Errorf("handshake for denied %s succeeded with a certificate for %v; want it to fail", noName, cs.PeerCertificates[0].DNSNames)
	}
	if ask.Asked(noName) == 0 {
		t.Errorf("the ask endpoint was never asked about %s", noName)
	}
	// The denial is cached: a second handshake fails without asking again.
	if _, err := handshake(g.HTTPSAddr(), noName, nil, 10*time.Second); err == nil {
		t.Errorf("second handshake for denied %s succeeded; want it to fail", noName)
	}
	if n := ask.Asked(noName); n != 1 {
		t.Errorf("the ask endpoint was asked %d times about %s after two handshakes, want 1 (answers are cached)", n, noName)
	}
	if n := p.OrdersFor(noName); n != 0 {
		t.Errorf("Pebble saw %d orders for denied %s, want 0", n, noName)
	}

	// a.test (tls: auto) settles, then nothing else may reach the CA.
	waitCert(t, g, "a.test", p.Roots)
	orders := p.Orders()

	t.Run("burst of random names", func(t *testing.T) {
		names := make(chan string)
		var mu sync.Mutex
		var succeeded []string
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				for name := range names {
					if _, err := handshake(g.HTTPSAddr(), name, nil, 3*time.Second); err == nil {
						mu.Lock()
						succeeded = append(succeeded, name)
						mu.Unlock()
					}
				}
			})
		}
		for range 100 {
			names <- randomLabel() + ".ondemand.test"
		}
		close(names)
		wg.Wait()
		if len(succeeded) > 0 {
			t.Errorf("%d of 100 handshakes for random denied names succeeded, want 0: %v", len(succeeded), succeeded)
		}
		if n := p.Orders() - orders; n != 0 {
			t.Errorf("Pebble saw %d new orders after a burst of 100 random names, want 0 (names ordered: %v)", n, p.OrderedNames())
		}
	})

	t.Run("names outside any site", func(t *testing.T) {
		for _, name := range []string{randomLabel() + ".example.net", randomLabel() + ".test", randomLabel() + ".a.test"} {
			if cs, err := handshake(g.HTTPSAddr(), name, nil, 5*time.Second); err == nil {
				t.Errorf("handshake for %s (no site) succeeded with a certificate for %v; want it to fail", name, cs.PeerCertificates[0].DNSNames)
			}
			if n := ask.Asked(name); n != 0 {
				t.Errorf("the ask endpoint was asked %d times about %s, which no on_demand site covers", n, name)
			}
			if n := p.OrdersFor(name); n != 0 {
				t.Errorf("Pebble saw %d orders for %s, which no site covers", n, name)
			}
		}
		if n := p.Orders() - orders; n != 0 {
			t.Errorf("Pebble saw %d new orders for names outside any site, want 0 (names ordered: %v)", n, p.OrderedNames())
		}
	})

	t.Run("421 for a Host of another site", func(t *testing.T) {
		tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, false)
		defer tr.CloseIdleConnections()
		resp, body := httpsGet(t, tr, fmt.Sprintf("https://a.test:%d/", g.HTTPSPort), okName)
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("SNI a.test with Host %s = %d %q, want 421", okName, resp.StatusCode, body)
		}
		tr2 := tlsTransport(g.HTTPSPort, "a.test", p.Roots, true)
		defer tr2.CloseIdleConnections()
		resp, body = httpsGet(t, tr2, fmt.Sprintf("https://a.test:%d/", g.HTTPSPort), okName)
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("over h2, SNI a.test with :authority %s = %d %q, want 421", okName, resp.StatusCode, body)
		}
	})

	if g.Exited() {
		t.Fatalf("gateway exited (code %d) during the on-demand test", g.Cmd.ProcessState.ExitCode())
	}
}

// TestOnDemandRequiresAsk: an on_demand site without on_demand.ask is a
// config error, for validate and for run.
func TestOnDemandRequiresAsk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  listen: 127.0.0.1
  http_port: %d
  https_port: %d
  admin: "off"
  data_dir: ./data
sites:
  - hosts: ["*.ondemand.test"]
    tls: on_demand
    routes: [{path: /, respond: {body: "on demand\n"}}]
`, freePort(t), freeTCPUDPPort(t))
	if err := os.WriteFile(filepath.Join(dir, "g.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"validate", "run"} {
		stdout, stderr, code := runCLI(t, dir, nil, cmd, "--config", "g.yaml")
		if code != 1 {
			t.Errorf("gatehouse %s of an on_demand site without ask: exit code %d, want 1\nstdout: %s\nstderr: %s", cmd, code, stdout, stderr)
		} else if out := stdout + stderr; !strings.Contains(out, "ask") || !strings.Contains(out, "g.yaml:") {
			t.Errorf("gatehouse %s of an on_demand site without ask printed %q, want a FILE:LINE:COL error naming ask", cmd, out)
		}
	}
}
