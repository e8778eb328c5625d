package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// countingIssuer counts Issue calls and can be made to fail.
type countingIssuer struct {
	certmagic.Issuer
	calls atomic.Int64
	fail  atomic.Bool
}

func (c *countingIssuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	c.calls.Add(1)
	if c.fail.Load() {
		return nil, errors.New("test issuer: failing on purpose")
	}
	return c.Issuer.Issue(ctx, csr)
}

// startTestManager builds and starts a Manager from a YAML document (DATA is
// replaced by dataDir) with test hooks; stop ends it (also at cleanup).
func startTestManager(t *testing.T, doc, dataDir string, log *slog.Logger, opts managerOptions) (m *Manager, stop func()) {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(strings.ReplaceAll(doc, "DATA", dataDir)))
	if err != nil {
		t.Fatal(err)
	}
	m, err = newManager(cfg, log, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); m.Stop() }) }
	t.Cleanup(stop)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return m, stop
}

// waitNoLocks waits until CertMagic holds no storage lock in dataDir, so no
// background renewal still writes there when the test's directory goes.
func waitNoLocks(t *testing.T, dataDir string) {
	t.Helper()
	waitFor(t, func() bool {
		locks, _ := filepath.Glob(filepath.Join(dataDir, "certmagic", "locks", "*"))
		return len(locks) == 0
	})
}

const onDemandDoc = `
global:
  data_dir: DATA
  on_demand: {ask: "ASK", rate_limit: RATE}
sites:
  - hosts: ["*.od.example"]
    tls: on_demand
    routes: [{respond: {}}]
`

func onDemandConfig(ask string, rate int) string {
	return strings.NewReplacer("ASK", ask, "RATE", fmt.Sprint(rate)).Replace(onDemandDoc)
}

// TestOnDemandStoredCertsSurviveRestart: on-demand certificates in storage
// are served after a restart whatever the rate limit and whether the ask
// endpoint answers; the limits apply only when a certificate is ordered, and
// a renewal refused by them keeps the current certificate in service.
func TestOnDemandStoredCertsSurviveRestart(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "testca"))
	if err != nil {
		t.Fatal(err)
	}
	iss := &countingIssuer{Issuer: ca}
	ask := newAskServer(t, allowAll)
	names := []string{"a.od.example", "b.od.example", "c.od.example", "d.od.example", "e.od.example", "f.od.example"}
	withCA := managerOptions{onDemandIssuers: func(*certmagic.Config) []certmagic.Issuer { return []certmagic.Issuer{iss} }}

	handshakeAll := func(phase string, handshake func(string) (*big.Int, error)) map[string]string {
		t.Helper()
		serials := map[string]string{}
		for _, name := range names {
			serial, err := handshake(name)
			if err != nil {
				t.Fatalf("%s: handshake for %s: %v", phase, name, err)
			}
			serials[name] = serial.String()
		}
		return serials
	}

	// Run 1: six certificates obtained on demand (rate_limit 10).
	m, stop := startTestManager(t, onDemandConfig(ask.askURL(), 10), dataDir, quietLog(), withCA)
	first := handshakeAll("run 1", serveTLS(t, m))
	if n := iss.calls.Load(); n != int64(len(names)) {
		t.Fatalf("run 1: issuer called %d times, want %d", n, len(names))
	}
	if st := m.state.Load().onDemand.policy.Stats(); st.Reserved != uint64(len(names)) || st.RateLimited != 0 {
		t.Fatalf("run 1: policy stats %+v", st)
	}
	stop()

	// Run 2: restart with rate_limit 2 and the ask endpoint down. All six
	// are loaded from storage, without asking and without issuing.
	ask.down.Store(true)
	hits := ask.hits.Load()
	m, stop = startTestManager(t, onDemandConfig(ask.askURL(), 2), dataDir, quietLog(), withCA)
	handshake := serveTLS(t, m)
	for round := range 2 {
		got := handshakeAll(fmt.Sprintf("run 2, round %d", round+1), handshake)
		for name, serial := range got {
			if serial != first[name] {
				t.Fatalf("run 2: %s served serial %s, want the stored %s", name, serial, first[name])
			}
		}
	}
	if n := iss.calls.Load(); n != int64(len(names)) {
		t.Fatalf("run 2: issuer called %d times in total, want still %d", n, len(names))
	}
	wantHits(t, ask, hits)
	// A name without a stored certificate still needs the ask endpoint.
	if _, err := handshake("new.od.example"); err == nil {
		t.Fatal("run 2: handshake for a new name succeeded with the ask endpoint down")
	}
	if n := iss.calls.Load(); n != int64(len(names)) {
		t.Fatalf("run 2: issuer called for a new name while the ask endpoint is down")
	}
	stop()

	// Run 3: rate_limit 1, and every certificate is due for renewal. The
	// one renewal the bucket admits replaces its certificate; the refused
	// ones keep serving theirs (CertMagic used to evict a certificate whose
	// renewal the DecisionFunc refused).
	ask.down.Store(false)
	renewAll := managerOptions{onDemandIssuers: func(c *certmagic.Config) []certmagic.Issuer {
		c.RenewalWindowRatio = 1 // always in the renewal window
		return []certmagic.Issuer{iss}
	}}
	m, stop = startTestManager(t, onDemandConfig(ask.askURL(), 1), dataDir, quietLog(), renewAll)
	handshake = serveTLS(t, m)
	attempts := func() uint64 { st := m.state.Load().onDemand.policy.Stats(); return st.Reserved + st.RateLimited }
	handshakeAll("run 3, round 1", handshake)
	waitFor(t, func() bool { return attempts() >= uint64(len(names)) })
	if st := m.state.Load().onDemand.policy.Stats(); st.Reserved != 1 {
		t.Fatalf("run 3: %d renewals admitted with rate_limit 1, want 1 (stats %+v)", st.Reserved, st)
	}
	waitNoLocks(t, dataDir)
	got := handshakeAll("run 3, round 2", handshake)
	changed := 0
	for name, serial := range got {
		if serial != first[name] {
			changed++
		}
	}
	if changed != 1 {
		t.Fatalf("run 3: %d certificates replaced, want 1", changed)
	}
	if n := iss.calls.Load(); n != int64(len(names))+1 {
		t.Fatalf("run 3: issuer called %d times in total, want %d", n, len(names)+1)
	}
	waitFor(t, func() bool { return attempts() >= 2*uint64(len(names)) })
	waitNoLocks(t, dataDir)
	stop()
}

// TestOnDemandGate: one attempt over the issuer list (primary, then
// fallback) is reserved once; a new attempt is spaced; the inner issuer's
// key and optional interfaces are kept.
func TestOnDemandGate(t *testing.T) {
	t.Parallel()
	ask := newAskServer(t, allowAll)
	p, clock := newTestPolicy(config.OnDemand{Ask: ask.askURL(), RateLimit: 10}, nil)
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	primary := &countingIssuer{Issuer: ca}
	primary.fail.Store(true)
	fallback := &countingIssuer{Issuer: ca}
	acmeIss := &certmagic.ACMEIssuer{CA: "https://acme.invalid/dir"} // never asked to issue
	wrapped := wrapOnDemandIssuers([]certmagic.Issuer{primary, fallback, acmeIss}, newOnDemandGate(p))

	if wrapped[0].IssuerKey() != caIssuerKey || wrapped[2].IssuerKey() != acmeIss.IssuerKey() {
		t.Fatalf("issuer keys changed: %q, %q", wrapped[0].IssuerKey(), wrapped[2].IssuerKey())
	}
	for _, iface := range []func(certmagic.Issuer) bool{
		func(i certmagic.Issuer) bool { _, ok := i.(certmagic.PreChecker); return ok },
		func(i certmagic.Issuer) bool { _, ok := i.(certmagic.Revoker); return ok },
		func(i certmagic.Issuer) bool { _, ok := i.(certmagic.RenewalInfoGetter); return ok },
	} {
		if !iface(wrapped[2]) {
			t.Fatal("the ACME issuer's wrapper lost an optional interface")
		}
		if iface(wrapped[0]) {
			t.Fatal("a wrapper claims an interface its inner issuer lacks")
		}
	}

	csr := testCSR(t, "x.example.com")
	// One pass of CertMagic's retry loop: the primary fails, the fallback
	// of the same pass is admitted without a second reservation.
	attempt := 0
	ctx := context.WithValue(t.Context(), certmagic.AttemptsCtxKey, &attempt)
	if _, err := wrapped[0].Issue(ctx, csr); err == nil || errors.Is(err, ErrRateLimited) {
		t.Fatalf("primary: %v, want its own failure", err)
	}
	if _, err := wrapped[1].Issue(ctx, csr); err != nil {
		t.Fatalf("fallback in the same pass: %v", err)
	}
	if st := p.Stats(); st.Reserved != 1 || primary.calls.Load() != 1 || fallback.calls.Load() != 1 {
		t.Fatalf("stats %+v, primary %d, fallback %d calls", st, primary.calls.Load(), fallback.calls.Load())
	}
	// The next pass (retry) is spaced by name_interval, refused for good.
	attempt++
	_, err = wrapped[0].Issue(ctx, csr)
	var noRetry certmagic.ErrNoRetry
	if !errors.Is(err, ErrRateLimited) || !errors.As(err, &noRetry) {
		t.Fatalf("next pass: %v, want ErrRateLimited wrapped in ErrNoRetry", err)
	}
	if primary.calls.Load() != 1 {
		t.Fatal("a refused attempt reached the issuer")
	}
	clock.Advance(defaultNameInterval)
	attempt++
	if _, err := wrapped[1].Issue(ctx, csr); err != nil {
		t.Fatalf("after name_interval: %v", err)
	}

	// The ask endpoint keeps the last word at issuance; names of no site
	// and IP addresses are refused.
	for _, c := range []struct {
		csr  *x509.CertificateRequest
		want error
	}{
		{testCSR(t, "denied.other"), ErrNotOnDemandName},
		{testCSR(t, "127.0.0.1"), ErrNotOnDemandName},
	} {
		if _, err := wrapped[1].Issue(t.Context(), c.csr); !errors.Is(err, c.want) {
			t.Fatalf("Issue(%v %v) = %v, want %v", c.csr.DNSNames, c.csr.IPAddresses, err, c.want)
		}
	}
	ask.down.Store(true)
	if _, err := wrapped[1].Issue(t.Context(), testCSR(t, "down.example.com")); !errors.Is(err, ErrAskFailed) {
		t.Fatalf("Issue with the ask endpoint down = %v, want ErrAskFailed", err)
	}
}

// testCSR is a signed CSR for name (a DNS name or an IP address).
func testCSR(t *testing.T, name string) *x509.CertificateRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// TestEmptySNINeverOnDemand: a handshake without SNI is served the local
// IP's certificate through the config of the IP's site, never the on-demand
// config (whose handshake maintenance would renew or evict it without any
// ask), even when a "*" site is on_demand.
func TestEmptySNINeverOnDemand(t *testing.T) {
	t.Parallel()
	ask := newAskServer(t, allowAll)
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "testca"))
	if err != nil {
		t.Fatal(err)
	}
	iss := &countingIssuer{Issuer: ca}
	m, _ := startTestManager(t, `
global:
  data_dir: DATA
  on_demand: {ask: "`+ask.askURL()+`"}
sites:
  - hosts: ["127.0.0.1"]
    tls: internal
    routes: [{respond: {}}]
  - hosts: ["*"]
    tls: on_demand
    routes: [{respond: {}}]
`, t.TempDir(), quietLog(), managerOptions{onDemandIssuers: func(c *certmagic.Config) []certmagic.Issuer {
		c.RenewalWindowRatio = 1 // on-demand maintenance would renew whatever it serves
		return []certmagic.Issuer{iss}
	}})
	handshake := serveTLS(t, m)
	var first *big.Int
	waitFor(t, func() bool {
		first, err = handshake("")
		return err == nil
	})
	for range 5 {
		serial, err := handshake("")
		if err != nil || serial.Cmp(first) != 0 {
			t.Fatalf("handshake without SNI: serial %v, err %v; want %v", serial, err, first)
		}
	}
	if st := m.state.Load().onDemand.policy.Stats(); st != (OnDemandStats{}) {
		t.Fatalf("the on-demand policy was consulted for a handshake without SNI: %+v", st)
	}
	if n := iss.calls.Load(); n != 0 {
		t.Fatalf("on-demand issuer called %d times", n)
	}

	// The choice itself, for local addresses of no site and of the site.
	for _, c := range []struct {
		local string
		want  *certmagic.Config
	}{
		{"127.0.0.1:443", m.state.Load().internal},
		{"[::ffff:127.0.0.1]:443", m.state.Load().internal},
		{"10.1.2.3:443", m.acme}, // "*" is on_demand: not for an IP without SNI
		{"[fe80::1%eth0]:443", m.acme},
	} {
		hello := &stdtls.ClientHelloInfo{Conn: stubConn{local: c.local}}
		if got := m.configForHello(hello); got != c.want {
			t.Errorf("local %s: wrong config (on-demand: %v)", c.local, got == m.state.Load().onDemand.cfg)
		}
	}
	if got := m.configForHello(&stdtls.ClientHelloInfo{}); got != m.acme {
		t.Error("no connection: want the ACME config")
	}
	if got := m.configForHello(&stdtls.ClientHelloInfo{ServerName: "x.example.com"}); got != m.state.Load().onDemand.cfg {
		t.Error("SNI of the on_demand site: want the on-demand config")
	}
}

type stubConn struct {
	net.Conn
	local string
}

func (c stubConn) LocalAddr() net.Addr  { return stubAddr(c.local) }
func (c stubConn) RemoteAddr() net.Addr { return stubAddr("192.0.2.1:5555") }

type stubAddr string

func (a stubAddr) Network() string { return "tcp" }
func (a stubAddr) String() string  { return string(a) }

// logRecorder is a slog handler that keeps messages at Info and above.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// count is how many records at level or above contain substr.
func (r *logRecorder) count(level slog.Level, substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level >= level && strings.Contains(rec.Message, substr) {
			n++
		}
	}
	return n
}

func (r *logRecorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		out = append(out, rec.Level.String()+" "+rec.Message)
	}
	return out
}

// TestACMETLSALPN: acme-tls/1 is advertised only with the tls-alpn-01
// challenge enabled, and a handshake offering it with no challenge in
// progress fails quietly (nothing logged at Info or above).
func TestACMETLSALPN(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		challenges string
		advertise  bool
	}{
		{"[http-01, tls-alpn-01]", true},
		{"[http-01]", false},
	} {
		t.Run(c.challenges, func(t *testing.T) {
			t.Parallel()
			rec := &logRecorder{}
			m, _ := startTestManager(t, `
global:
  data_dir: DATA
  acme: {challenges: `+c.challenges+`}
sites:
  - hosts: [app.localhost]
    tls: internal
    routes: [{respond: {}}]
`, t.TempDir(), slog.New(rec), managerOptions{})
			protos := m.TLSConfig().NextProtos
			if got := strings.Contains(strings.Join(protos, ","), acmeTLSALPN); got != c.advertise {
				t.Fatalf("NextProtos %v: acme-tls/1 advertised = %v, want %v", protos, got, c.advertise)
			}

			ln, err := stdtls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); _ = c.(*stdtls.Conn).Handshake() }()
				}
			}()
			dial := func(sni string, protos ...string) error {
				c, err := stdtls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
					&stdtls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: protos})
				if err == nil {
					c.Close()
				}
				return err
			}
			waitFor(t, func() bool { return dial("app.localhost", "h2") == nil })
			before := rec.count(slog.LevelInfo, "")
			for _, sni := range []string{"app.localhost", "x.example.com", ""} {
				for range 20 {
					if err := dial(sni, acmeTLSALPN); err == nil {
						t.Fatalf("acme-tls/1 handshake for %q without a challenge succeeded", sni)
					}
				}
			}
			if err := dial("app.localhost", "h2", acmeTLSALPN); err == nil {
				t.Fatal("handshake offering acme-tls/1 among others without a challenge succeeded")
			}
			if after := rec.count(slog.LevelInfo, ""); after != before {
				t.Fatalf("acme-tls/1 handshakes logged %d records at Info or above: %q", after-before, rec.messages()[before:])
			}
			if err := dial("app.localhost", "h2", "http/1.1"); err != nil {
				t.Fatalf("ordinary handshake: %v", err)
			}
		})
	}
}

// TestStartStopGoroutines: Start then Stop (or a failed Start then Stop)
// leaves no goroutine behind. Not parallel: it counts the process's
// goroutines.
func TestStartStopGoroutines(t *testing.T) {
	baseline := goroutines()
	for _, c := range []struct {
		name     string
		doc      string
		startErr bool
	}{
		{"internal site", `
global: {data_dir: DATA}
sites: [{hosts: [app.localhost], tls: internal, routes: [{respond: {}}]}]
`, false},
		{"missing manual certificate", `
global: {data_dir: DATA}
sites:
  - {hosts: [app.localhost], tls: internal, routes: [{respond: {}}]}
  - {hosts: [m.example], tls: {cert: CERT, key: KEY}, routes: [{respond: {}}]}
`, true},
	} {
		dir := t.TempDir()
		certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
		writeSelfSigned(t, certPath, keyPath, "m.example", 1)
		doc := strings.NewReplacer("DATA", filepath.Join(dir, "data"), "CERT", certPath, "KEY", keyPath).Replace(c.doc)
		cfg, err := config.Parse("t.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if c.startErr {
			os.Remove(certPath) // vanishes between validation and start
		}
		m, err := NewManager(cfg, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		err = m.Start(context.Background())
		if (err != nil) != c.startErr {
			t.Fatalf("%s: Start = %v", c.name, err)
		}
		if !c.startErr {
			// Let the internal certificate be issued, so Stop meets the
			// manager fully running.
			ln, err := stdtls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
			if err != nil {
				t.Fatal(err)
			}
			var served sync.WaitGroup
			served.Go(func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					served.Go(func() { defer c.Close(); _ = c.(*stdtls.Conn).Handshake() })
				}
			})
			waitFor(t, func() bool {
				c, err := stdtls.Dial("tcp", ln.Addr().String(), &stdtls.Config{ServerName: "app.localhost", InsecureSkipVerify: true})
				if err == nil {
					c.Close()
				}
				return err == nil
			})
			ln.Close()
			served.Wait()
		}
		m.Stop()
		m.Stop() // idempotent
		deadline := time.Now().Add(10 * time.Second)
		for goroutines() > baseline {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d goroutines after Stop, %d before NewManager:\n%s", c.name, goroutines(), baseline, stacks())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestDataDirPermissions: existing data_dir and pki directories open to
// other users are restricted to 0700, with a warning.
func TestDataDirPermissions(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	pki := filepath.Join(dataDir, "pki")
	if err := os.MkdirAll(pki, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dataDir, pki} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rec := &logRecorder{}
	m, _ := startTestManager(t, `
global: {data_dir: DATA}
sites: [{hosts: [app.localhost], tls: internal, routes: [{respond: {}}]}]
`, dataDir, slog.New(rec), managerOptions{})
	// Let the background issuance finish before the directory is removed.
	handshake := serveTLS(t, m)
	waitFor(t, func() bool { _, err := handshake("app.localhost"); return err == nil })
	for _, d := range []string{dataDir, pki} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %#o, want 0700", d, perm)
		}
	}
	if n := rec.count(slog.LevelWarn, "restricted it to 0700"); n != 2 {
		t.Errorf("%d warnings about tightened directories, want 2: %q", n, rec.messages())
	}

	// Already private: left alone, nothing logged.
	rec2 := &logRecorder{}
	if err := ensurePrivateDir(dataDir, slog.New(rec2)); err != nil {
		t.Fatal(err)
	}
	if n := rec2.count(slog.LevelInfo, ""); n != 0 {
		t.Errorf("private directory: %q logged", rec2.messages())
	}

	// LoadOrCreateCA on its own tightens too.
	other := filepath.Join(t.TempDir(), "pki")
	if err := os.Mkdir(other, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(other, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(other); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(other); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("LoadOrCreateCA left %s at %v (err %v), want 0700", other, fi.Mode().Perm(), err)
	}
}

func goroutines() int { return runtime.NumGoroutine() }

func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
