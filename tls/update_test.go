package tls

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// siteDoc is a config document: global settings (YAML flow mapping body,
// DATA for the data directory) and sites, each an internal site for a host,
// or "host=cert,key" for a manual one, or "host:on_demand".
func siteDoc(global string, sites ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global: {data_dir: DATA%s}\nsites:\n", global)
	for _, s := range sites {
		switch host, files, manual := strings.Cut(s, "="); {
		case manual:
			cert, key, _ := strings.Cut(files, ",")
			fmt.Fprintf(&b, "  - {hosts: [%q], tls: {cert: %s, key: %s}, routes: [{respond: {}}]}\n", host, cert, key)
		case strings.HasSuffix(s, ":on_demand"):
			fmt.Fprintf(&b, "  - {hosts: [%q], tls: on_demand, routes: [{respond: {}}]}\n", strings.TrimSuffix(s, ":on_demand"))
		default:
			fmt.Fprintf(&b, "  - {hosts: [%q], tls: internal, routes: [{respond: {}}]}\n", s)
		}
	}
	return b.String()
}

// settlingDir is a temporary data directory for a test whose Updates leave
// CertMagic jobs behind that the Manager cannot wait for (an obtain for a
// name removed meanwhile: cancelled, it still checks storage and takes and
// releases its lock). Call it before starting the Manager, so that its
// cleanup runs after the Manager's Stop: it waits for the locks to go and
// retries the removal until the last writes are done.
func settlingDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gatehouse-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		waitNoLocks(t, dir)
		deadline := time.Now().Add(10 * time.Second)
		for err := os.RemoveAll(dir); err != nil; err = os.RemoveAll(dir) {
			if time.Now().After(deadline) {
				t.Errorf("removing %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

func parseDoc(t *testing.T, doc, dataDir string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(strings.ReplaceAll(doc, "DATA", dataDir)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// getCert asks m for name's certificate as a handshake would.
func getCert(m *Manager, name string) (*stdtls.Certificate, error) {
	return m.GetCertificate(&stdtls.ClientHelloInfo{ServerName: name, Conn: stubConn{local: "127.0.0.1:443"}})
}

// cached reports whether m's cache holds a certificate naming name.
func cached(m *Manager, name string) bool {
	return slices.ContainsFunc(m.cache.AllMatchingCertificates(name), func(c certmagic.Certificate) bool {
		return slices.Contains(c.Names, name)
	})
}

// serialOf waits until a handshake for name succeeds and returns the serial.
func serialOf(t *testing.T, handshake func(string) (*big.Int, error), name string) *big.Int {
	t.Helper()
	var serial *big.Int
	waitFor(t, func() bool {
		s, err := handshake(name)
		serial = s
		return err == nil
	})
	return serial
}

func expiryNames(m *Manager) []string {
	var names []string
	for _, e := range m.Expiries() {
		if e.NotAfter.IsZero() {
			names = append(names, e.Name+"(zero)")
			continue
		}
		names = append(names, e.Name)
	}
	return names
}

// TestUpdateSites walks one Manager through site changes: an internal site
// added and removed, a manual pair added, a bad pair refused without any
// change, a manual pair removed, and a global change refused.
func TestUpdateSites(t *testing.T) {
	t.Parallel()
	dataDir, files := t.TempDir(), t.TempDir()
	m, _ := startTestManager(t, siteDoc("", "a.localhost"), dataDir, quietLog(), managerOptions{})
	handshake := serveTLS(t, m)
	update := func(doc string) error {
		t.Helper()
		return m.Update(t.Context(), parseDoc(t, doc, dataDir))
	}
	aSerial := serialOf(t, handshake, "a.localhost")

	// Add b: it gets a certificate; a keeps its own.
	if err := update(siteDoc("", "a.localhost", "b.localhost")); err != nil {
		t.Fatal(err)
	}
	bSerial := serialOf(t, handshake, "b.localhost")
	if s, err := handshake("a.localhost"); err != nil || s.Cmp(aSerial) != 0 {
		t.Fatalf("a after adding b: serial %v, err %v; want %v", s, err, aSerial)
	}

	// Remove a: refused at once, and out of the cache (not renewed).
	if err := update(siteDoc("", "b.localhost")); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake("a.localhost"); err == nil {
		t.Fatal("handshake for a removed site succeeded")
	}
	if _, err := getCert(m, "a.localhost"); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("GetCertificate(a) = %v, want ErrNoCertificate", err)
	}
	if cached(m, "a.localhost") {
		t.Fatal("a's certificate is still in the cache")
	}
	// An obtain that was in flight for a lands after the Update: what it
	// caches is dropped again (CertMagic caches after storing, as here).
	if _, err := m.state.Load().internal.CacheManagedCertificate(t.Context(), "a.localhost"); err != nil {
		t.Fatal(err)
	}
	if cached(m, "a.localhost") {
		t.Fatal("a certificate cached for a removed name stayed in the cache")
	}
	if s, err := handshake("b.localhost"); err != nil || s.Cmp(bSerial) != 0 {
		t.Fatalf("b after removing a: serial %v, err %v; want %v", s, err, bSerial)
	}

	// Add a manual site: served at once.
	certPath, keyPath := filepath.Join(files, "m.crt"), filepath.Join(files, "m.key")
	writeSelfSigned(t, certPath, keyPath, "m.example", 77)
	manualSite := "m.example=" + certPath + "," + keyPath
	if err := update(siteDoc("", "b.localhost", manualSite)); err != nil {
		t.Fatal(err)
	}
	if s, err := handshake("m.example"); err != nil || s.Int64() != 77 {
		t.Fatalf("manual site: serial %v, err %v; want 77", s, err)
	}
	if got, want := expiryNames(m), []string{"b.localhost", "m.example"}; !slices.Equal(got, want) {
		t.Fatalf("Expiries names %v, want %v", got, want)
	}
	for _, e := range m.Expiries() {
		if e.Name == "m.example" && (e.NotAfter.Before(time.Now()) || e.NotAfter.After(time.Now().Add(25*time.Hour))) {
			t.Fatalf("m.example NotAfter %v, want about a day from now", e.NotAfter)
		}
	}

	// A bad pair for a new site: an error, and nothing changes, not even
	// the other site added alongside.
	badCert, badKey := filepath.Join(files, "bad.crt"), filepath.Join(files, "bad.key")
	writeSelfSigned(t, badCert, badKey, "bad.example", 5)
	badCfg := parseDoc(t, siteDoc("", "b.localhost", manualSite, "c.localhost", "bad.example="+badCert+","+badKey), dataDir)
	if err := os.WriteFile(badCert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := m.state.Load()
	if err := m.Update(t.Context(), badCfg); err == nil || !strings.Contains(err.Error(), badCert) {
		t.Fatalf("Update with a bad pair = %v, want an error naming %s", err, badCert)
	}
	if m.state.Load() != before {
		t.Fatal("a failed Update swapped the state")
	}
	m.mu.Lock()
	_, managingC := m.managing["c.localhost"]
	m.mu.Unlock()
	if managingC {
		t.Fatal("a failed Update started managing a new name")
	}
	for _, name := range []string{"c.localhost", "bad.example"} {
		if _, err := getCert(m, name); err == nil {
			t.Fatalf("%s served after a failed Update", name)
		}
	}
	if s, err := handshake("m.example"); err != nil || s.Int64() != 77 {
		t.Fatalf("manual site after a failed Update: serial %v, err %v", s, err)
	}
	if s, err := handshake("b.localhost"); err != nil || s.Cmp(bSerial) != 0 {
		t.Fatalf("b after a failed Update: serial %v, err %v", s, err)
	}

	// A global change needs a restart, and changes nothing.
	if err := update(siteDoc(", acme: {ca: \"https://ca.invalid/dir\"}", "b.localhost", "d.localhost")); !errors.Is(err, ErrNeedsRestart) ||
		!strings.Contains(err.Error(), "acme.ca") {
		t.Fatalf("Update with another acme.ca = %v, want ErrNeedsRestart naming acme.ca", err)
	}
	if m.state.Load() != before {
		t.Fatal("a refused Update swapped the state")
	}

	// Remove the manual site: no longer served, cached or watched.
	if err := update(siteDoc("", "b.localhost")); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake("m.example"); err == nil {
		t.Fatal("removed manual site still served")
	}
	if cached(m, "m.example") {
		t.Fatal("removed manual certificate still cached")
	}
	m.manual.mu.Lock()
	watched := len(m.manual.entries)
	m.manual.mu.Unlock()
	if watched != 0 {
		t.Fatalf("%d manual pairs still watched", watched)
	}
	if got, want := expiryNames(m), []string{"b.localhost"}; !slices.Equal(got, want) {
		t.Fatalf("Expiries names %v, want %v", got, want)
	}
	waitNoLocks(t, dataDir)
}

// TestUpdateSharedManualPair: two sites with the same files, then one of
// them removed: the certificate keeps serving the other.
func TestUpdateSharedManualPair(t *testing.T) {
	t.Parallel()
	dataDir, files := t.TempDir(), t.TempDir()
	certPath, keyPath := filepath.Join(files, "c.pem"), filepath.Join(files, "k.pem")
	writeSelfSigned(t, certPath, keyPath, "shared.example", 9)
	pair := "=" + certPath + "," + keyPath
	m, _ := startTestManager(t, siteDoc("", "shared.example"+pair), dataDir, quietLog(), managerOptions{})
	handshake := serveTLS(t, m)
	for _, doc := range []string{
		siteDoc("", "shared.example"+pair, "*"+pair), // the same pair again: kept, not loaded twice
		siteDoc("", "*"+pair),                        // the first site goes, its pair stays
	} {
		if err := m.Update(t.Context(), parseDoc(t, doc, dataDir)); err != nil {
			t.Fatal(err)
		}
		if s, err := handshake("shared.example"); err != nil || s.Int64() != 9 {
			t.Fatalf("serial %v, err %v; want 9", s, err)
		}
	}
	m.manual.mu.Lock()
	n := len(m.manual.entries)
	m.manual.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d manual entries, want 1", n)
	}
}

// TestUpdateLazyIssuers: the internal CA and the on-demand config are built
// by the first Update that needs them; on-demand certificates go when their
// site does.
func TestUpdateLazyIssuers(t *testing.T) {
	t.Parallel()
	dataDir, files := t.TempDir(), t.TempDir()
	certPath, keyPath := filepath.Join(files, "c.pem"), filepath.Join(files, "k.pem")
	writeSelfSigned(t, certPath, keyPath, "m.example", 3)
	manualSite := "m.example=" + certPath + "," + keyPath

	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "testca"))
	if err != nil {
		t.Fatal(err)
	}
	iss := &countingIssuer{Issuer: ca}
	ask := newAskServer(t, allowAll)
	opts := managerOptions{onDemandIssuers: func(*certmagic.Config) []certmagic.Issuer { return []certmagic.Issuer{iss} }}

	m, _ := startTestManager(t, siteDoc("", manualSite), dataDir, quietLog(), opts)
	if m.RootCertPath() != "" || m.state.Load().onDemand != nil {
		t.Fatal("internal CA or on-demand config built without a site needing it")
	}
	handshake := serveTLS(t, m)

	// The internal CA appears.
	if err := m.Update(t.Context(), parseDoc(t, siteDoc("", manualSite, "a.localhost"), dataDir)); err != nil {
		t.Fatal(err)
	}
	if m.RootCertPath() == "" {
		t.Fatal("no internal CA after adding an internal site")
	}
	serialOf(t, handshake, "a.localhost")

	// On-demand appears, with its settings.
	odGlobal := `, on_demand: {ask: "` + ask.askURL() + `"}`
	odDoc := siteDoc(odGlobal, manualSite, "a.localhost", "*.od.example:on_demand")
	if err := m.Update(t.Context(), parseDoc(t, odDoc, dataDir)); err != nil {
		t.Fatal(err)
	}
	serialOf(t, handshake, "x.od.example")
	if !slices.Contains(expiryNames(m), "x.od.example") {
		t.Fatalf("Expiries %v lack the on-demand name", expiryNames(m))
	}
	// With on_demand sites on both sides, its settings are global.
	changed := siteDoc(`, on_demand: {ask: "`+ask.askURL()+`", rate_limit: 3}`, manualSite, "a.localhost", "*.od.example:on_demand")
	if err := m.Update(t.Context(), parseDoc(t, changed, dataDir)); !errors.Is(err, ErrNeedsRestart) {
		t.Fatalf("Update changing on_demand settings = %v, want ErrNeedsRestart", err)
	}

	// On-demand goes: its certificates with it.
	if err := m.Update(t.Context(), parseDoc(t, siteDoc(odGlobal, manualSite, "a.localhost"), dataDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake("x.od.example"); err == nil {
		t.Fatal("on-demand name served after its site was removed")
	}
	if cached(m, "x.od.example") || m.state.Load().onDemand != nil {
		t.Fatal("on-demand certificate or config kept after the last on_demand site went")
	}
	if slices.Contains(expiryNames(m), "x.od.example") {
		t.Fatal("Expiries still lists a removed on-demand name")
	}
	// The CA stays, and serves.
	if m.RootCertPath() == "" {
		t.Fatal("internal CA dropped")
	}
	if _, err := handshake("a.localhost"); err != nil {
		t.Fatal(err)
	}
	waitNoLocks(t, dataDir)
}

// TestUpdateConcurrentHandshakes: handshakes and Expiries run while Updates
// add and remove sites; the site present throughout never fails. Run with
// -race.
func TestUpdateConcurrentHandshakes(t *testing.T) {
	t.Parallel()
	dataDir := settlingDir(t)
	docs := []string{
		siteDoc("", "a.localhost", "b.localhost"),
		siteDoc("", "a.localhost"),
		siteDoc("", "a.localhost", "c.localhost"),
	}
	cfgs := make([]*config.Config, len(docs))
	for i, d := range docs {
		cfgs[i] = parseDoc(t, d, dataDir)
	}
	m, _ := startTestManager(t, docs[1], dataDir, quietLog(), managerOptions{})
	waitFor(t, func() bool { _, err := getCert(m, "a.localhost"); return err == nil })

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var aFailures, handshakes atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			names := []string{"a.localhost", "b.localhost", "c.localhost"}
			for n := i; ctx.Err() == nil; n++ {
				name := names[n%len(names)]
				_, err := getCert(m, name)
				handshakes.Add(1)
				if err != nil && name == "a.localhost" {
					aFailures.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = m.Expiries()
			_ = m.RootCertPath()
		}
	})
	var updaters sync.WaitGroup
	for u := range 2 { // Updates race each other too; they are serialised
		updaters.Go(func() {
			for i := range 15 {
				if err := m.Update(ctx, cfgs[(i+u)%len(cfgs)]); err != nil {
					t.Errorf("Update: %v", err)
				}
			}
		})
	}
	updaters.Wait()
	// End on a known state.
	if err := m.Update(ctx, cfgs[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := getCert(m, "b.localhost"); return err == nil })
	cancel()
	wg.Wait()
	if n := aFailures.Load(); n != 0 {
		t.Fatalf("a.localhost failed %d of %d handshakes during Updates", n, handshakes.Load())
	}
	if _, err := getCert(m, "c.localhost"); err == nil {
		t.Fatal("c.localhost served after its removal")
	}
	// Obtains in flight when c was removed are dropped when they land.
	waitNoLocks(t, dataDir)
	waitFor(t, func() bool { return !cached(m, "c.localhost") })
	if got, want := expiryNames(m), []string{"a.localhost", "b.localhost"}; !slices.Equal(got, want) {
		t.Fatalf("Expiries names %v, want %v", got, want)
	}
}

// TestUpdateNotRunning: Update needs a started, not stopped, Manager.
func TestUpdateNotRunning(t *testing.T) {
	t.Parallel()
	dataDir := settlingDir(t)
	cfg := parseDoc(t, siteDoc("", "a.localhost"), dataDir)
	m, err := NewManager(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(t.Context(), cfg); !errors.Is(err, errNotRunning) {
		t.Fatalf("Update before Start = %v", err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update with the same config: %v", err)
	}
	waitFor(t, func() bool { _, err := getCert(m, "a.localhost"); return err == nil })
	m.Stop()
	if err := m.Update(t.Context(), cfg); !errors.Is(err, errNotRunning) {
		t.Fatalf("Update after Stop = %v", err)
	}
}

func TestSameGlobalTLS(t *testing.T) {
	t.Parallel()
	const od = "x.example.com:on_demand"
	for _, c := range []struct {
		name         string
		global       string
		aSite, bSite string
		want         string // substring of the reason; "" for equal
	}{
		{"equal", "", "a.localhost", "b.localhost", ""},
		{"email", ", email: x@y.example", "a.localhost", "a.localhost", "global.email"},
		{"acme.ca", `, acme: {ca: "https://ca.invalid/dir"}`, "a.localhost", "a.localhost", "global.acme.ca"},
		{"acme.challenges", `, acme: {challenges: [http-01]}`, "a.localhost", "a.localhost", "global.acme.challenges"},
		{"challenge order", `, acme: {challenges: [tls-alpn-01, http-01]}`, "a.localhost", "a.localhost", ""},
		{"https_port", `, https_port: 8443`, "a.localhost", "a.localhost", "global.https_port"},
		{"on_demand unused", `, on_demand: {ask: "http://127.0.0.1:1/ask"}`, "a.localhost", od, ""},
		{"on_demand used", `, on_demand: {ask: "http://127.0.0.1:1/ask"}`, od, od, "global.on_demand"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dataDir := t.TempDir()
			base := `, acme: {challenges: [http-01, tls-alpn-01]}`
			if strings.Contains(c.global, "acme") {
				base = ""
			}
			aGlobal := `, acme: {challenges: [http-01, tls-alpn-01]}`
			if c.aSite == od {
				aGlobal += `, on_demand: {ask: "http://127.0.0.1:2/ask"}`
			}
			a := parseDoc(t, siteDoc(aGlobal, c.aSite), dataDir)
			b := parseDoc(t, siteDoc(base+c.global, c.bSite), dataDir)
			got := SameGlobalTLS(a, b)
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Fatalf("SameGlobalTLS = %q, want %q", got, c.want)
			}
			if back := SameGlobalTLS(b, a); (back == "") != (got == "") {
				t.Fatalf("not symmetric: %q vs %q", got, back)
			}
		})
	}
	a := parseDoc(t, siteDoc("", "a.localhost"), t.TempDir())
	b := parseDoc(t, siteDoc("", "a.localhost"), t.TempDir())
	if got := SameGlobalTLS(a, b); !strings.Contains(got, "data_dir") {
		t.Fatalf("another data_dir: %q", got)
	}
}

// TestUpdateStopGoroutines: after Updates that add and remove names, Stop
// leaves no goroutine behind. Not parallel: it counts goroutines.
func TestUpdateStopGoroutines(t *testing.T) {
	baseline := goroutines()
	dataDir := filepath.Join(t.TempDir(), "data")
	m, err := NewManager(parseDoc(t, siteDoc("", "a.localhost"), dataDir), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{
		siteDoc("", "a.localhost", "b.localhost"),
		siteDoc("", "b.localhost"),
		siteDoc("", "b.localhost", "c.localhost"),
	} {
		if err := m.Update(t.Context(), parseDoc(t, doc, dataDir)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { _, err := getCert(m, "c.localhost"); return err == nil })
	m.Stop()
	// CertMagic's lock-file keepers wake every 5s to see their lock gone.
	deadline := time.Now().Add(15 * time.Second)
	for goroutines() > baseline {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Stop, %d before NewManager:\n%s", goroutines(), baseline, stacks())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoSiteNoCertificate: a certificate in the cache is not served for a
// name of no site (here a manual certificate whose name is not a host of
// its site), so a name Update removed is refused even before its
// certificate has left the cache.
func TestNoSiteNoCertificate(t *testing.T) {
	t.Parallel()
	files := t.TempDir()
	certPath, keyPath := filepath.Join(files, "c.pem"), filepath.Join(files, "k.pem")
	writeSelfSigned(t, certPath, keyPath, "gone.example", 4)
	writeSelfSigned(t, filepath.Join(files, "o.pem"), filepath.Join(files, "ok.pem"), "other.example", 5)
	m, _ := startTestManager(t, siteDoc("",
		"other.example="+filepath.Join(files, "o.pem")+","+filepath.Join(files, "ok.pem"),
		"kept.example="+certPath+","+keyPath,
	), t.TempDir(), quietLog(), managerOptions{})
	if !cached(m, "gone.example") {
		t.Fatal("certificate not cached")
	}
	if _, err := getCert(m, "gone.example"); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("GetCertificate for a name of no site = %v, want ErrNoCertificate", err)
	}
	if c, err := getCert(m, "other.example"); err != nil || c.Leaf.SerialNumber.Int64() != 5 {
		t.Fatalf("GetCertificate(other.example) = %v, %v", c, err)
	}
}
