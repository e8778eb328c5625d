package integration

// Reloads driven from the command line and reloads of settings that are
// built once at start: `run --watch`, `validate`'s reload plan against a
// running gateway, and admin_public and a manual certificate's files, which
// must be applied or refused with 409, never reported as done and left
// unapplied. The shared reload helpers are in reload_test.go.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// ---------------------------------------------------------------- helpers

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

// ---------------------------------------------------------------- tests

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
