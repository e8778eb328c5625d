package integration

// ACME with a fallback CA and with External Account Binding, against an
// in-process Pebble doing real validation.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startPebbleGateway starts a fresh Pebble (configured by opts) validating
// against a fresh gateway's ports, and the gateway. acme returns the YAML
// written under global: after the email line (unindented, e.g. "acme:\n
// ca: ...\n"); it is called with each Pebble started, so it may register
// things with it.
func startPebbleGateway(t *testing.T, opts pebbleOptions, acme func(p *pebbleCA) string, sites string) (*tlsGateway, *pebbleCA) {
	t.Helper()
	g := &tlsGateway{t: t}
	var p *pebbleCA
	g.Proc = startServing(t, func() ([]string, []string, string) {
		g.HTTPPort, g.HTTPSPort = freePort(t), freeTCPUDPPort(t)
		p = newPebbleWith(t, g.HTTPPort, g.HTTPSPort, opts)
		dir := t.TempDir()
		g.ConfigPath, g.DataDir = filepath.Join(dir, "gatehouse.yaml"), filepath.Join(dir, "data")
		g.global = "email: test@example.com\n" + acme(p)
		g.WriteSites(sites)
		return nil, []string{"run", "--config", g.ConfigPath}, g.HTTPAddr()
	})
	return g, p
}

// logLineAtWarnOrError reports whether m is a WARN or ERROR line whose JSON
// text contains (case-insensitively) one of subs.
func logLineAtWarnOrError(m map[string]any, subs ...string) bool {
	lvl, _ := m["level"].(string)
	if lvl != "WARN" && lvl != "ERROR" {
		return false
	}
	b, _ := json.Marshal(m)
	text := strings.ToLower(string(b))
	for _, s := range subs {
		if strings.Contains(text, strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// checkGetA fetches https://a.test/ over HTTP/1.1 trusting only p's root.
func checkGetA(t *testing.T, g *tlsGateway, p *pebbleCA) {
	t.Helper()
	tr := tlsTransport(g.HTTPSPort, "a.test", p.Roots, false)
	defer tr.CloseIdleConnections()
	url := fmt.Sprintf("https://a.test:%d/", g.HTTPSPort)
	if resp, body := httpsGet(t, tr, url, ""); resp.StatusCode != http.StatusOK || body != "hello a\n" {
		t.Errorf("GET %s = %d %q, want 200 %q", url, resp.StatusCode, body, "hello a\n")
	}
}

// TestACMEFallbackCA: the first ACME CA refuses connections, so the
// certificate comes from the fallback CA (a working Pebble), in one order.
func TestACMEFallbackCA(t *testing.T) {
	t.Parallel()
	deadHost := deadAddr(t)
	deadCA := "https://" + deadHost + "/dir"
	start := time.Now()
	g, p := startPebbleGateway(t, pebbleOptions{}, func(p *pebbleCA) string {
		// No ca_root for the dead CA: the fallback's ca_root must be the one
		// used to reach Pebble.
		return fmt.Sprintf("acme:\n  ca: %s\n  challenges: [http-01]\n  fallback:\n    ca: %s\n    ca_root: %q\n",
			deadCA, p.DirURL, p.CARootFile)
	}, "sites:"+siteA)

	cs := waitCertWithin(t, g, "a.test", p.Roots, 60*time.Second)
	t.Logf("certificate from the fallback CA served %v after start", time.Since(start))
	checkChain(t, cs, "a.test", p.Root)
	if got, names := p.Orders(), p.OrderedNames(); got != 1 || p.OrdersFor("a.test") != 1 {
		t.Errorf("Pebble (the fallback CA) saw %d new orders (names %v), want exactly 1, for a.test", got, names)
	}
	checkGetA(t, g, p)

	// The first CA was tried and its failure logged, naming it.
	line := g.WaitLog(10*time.Second, "at WARN or ERROR naming the dead first CA "+deadHost, func(m map[string]any) bool {
		return logLineAtWarnOrError(m, deadHost)
	})
	b, _ := json.Marshal(line)
	t.Logf("gateway logged: %s", b)
	if g.Exited() {
		t.Fatalf("gateway exited (code %d)", g.Cmd.ProcessState.ExitCode())
	}
}

// randomMACKey returns a fresh 256-bit HMAC key, unpadded base64url as a CA
// hands it out.
func randomMACKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestACMEExternalAccountBinding: Pebble requires EAB. With the key it
// registered, the gateway gets a certificate; with a wrong MAC key it gets
// none, keeps running and logs the account problem.
func TestACMEExternalAccountBinding(t *testing.T) {
	t.Parallel()
	const keyID = "gatehouse-test-kid"
	goodKey := randomMACKey(t)
	// acme registers goodKey with Pebble and configures the gateway with mac.
	acme := func(mac string) func(p *pebbleCA) string {
		return func(p *pebbleCA) string {
			p.AddEABKey(keyID, goodKey)
			return fmt.Sprintf("acme:\n  ca: %s\n  ca_root: %q\n  challenges: [http-01]\n  eab:\n    key_id: %s\n    mac_key: %q\n",
				p.DirURL, p.CARootFile, keyID, mac)
		}
	}
	required := pebbleOptions{RequireEAB: true}

	t.Run("correct key", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		g, p := startPebbleGateway(t, required, acme(goodKey), "sites:"+siteA)
		cs := waitCert(t, g, "a.test", p.Roots)
		t.Logf("certificate with EAB served %v after start", time.Since(start))
		checkChain(t, cs, "a.test", p.Root)
		if got := p.OrdersFor("a.test"); got != 1 {
			t.Errorf("Pebble saw %d orders for a.test, want 1", got)
		}
		if !strings.Contains(p.log.String(), fmt.Sprintf("Binding with CA using kid %q", keyID)) {
			t.Errorf("Pebble did not log a successful account binding with kid %q", keyID)
		}
		checkGetA(t, g, p)
	})

	t.Run("wrong key", func(t *testing.T) {
		t.Parallel()
		badKey := randomMACKey(t)
		g, p := startPebbleGateway(t, required, acme(badKey), "sites:"+siteA)

		// For a bounded window, no certificate of any kind is served for a.test.
		const window = 10 * time.Second
		deadline := time.Now().Add(window)
		tries := 0
		for time.Now().Before(deadline) {
			tries++
			if cs, err := handshake(g.HTTPSAddr(), "a.test", nil, 5*time.Second); err == nil {
				leaf := cs.PeerCertificates[0]
				t.Fatalf("with a wrong EAB mac_key a handshake for a.test succeeded with a certificate for %v issued by %q",
					leaf.DNSNames, leaf.Issuer)
			}
			if g.Exited() {
				t.Fatalf("gateway exited (code %d) with a wrong EAB mac_key", g.Cmd.ProcessState.ExitCode())
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%d handshakes for a.test failed over %v", tries, window)
		if got := p.Orders(); got != 0 {
			t.Errorf("Pebble saw %d new orders from a gateway whose account binding it rejects, want 0", got)
		}

		line := g.WaitLog(5*time.Second, "at WARN or ERROR about the rejected account / external account binding",
			func(m map[string]any) bool {
				return logLineAtWarnOrError(m, "account", "eab", "binding", "unauthorized")
			})
		b, _ := json.Marshal(line)
		t.Logf("gateway logged: %s", b)

		// Still up and serving plain HTTP.
		if g.Exited() {
			t.Fatalf("gateway exited (code %d) with a wrong EAB mac_key", g.Cmd.ProcessState.ExitCode())
		}
		if r := doRequest(t, newClient(), "a.test", http.MethodGet, "http://"+g.HTTPAddr()+"/", nil, nil); r.Status != http.StatusPermanentRedirect {
			t.Errorf("with no certificate, plain HTTP for a.test = %d, want 308", r.Status)
		}
	})
}
