package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestMain(m *testing.M) {
	manualPollInterval = 50 * time.Millisecond // set once, before any watcher runs
	os.Exit(m.Run())
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// writeSelfSigned writes a self-signed certificate for name with the given
// serial to certPath/keyPath.
func writeSelfSigned(t *testing.T, certPath, keyPath, name string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Write the key first and the certificate last, by rename, so a poll
	// never sees a certificate without its key.
	for _, f := range []struct {
		path string
		blk  *pem.Block
	}{{keyPath, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}}, {certPath, &pem.Block{Type: "CERTIFICATE", Bytes: der}}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.blk), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// serveTLS runs a TLS listener with m's config and returns a function that
// handshakes with sni and returns the leaf's serial (or the handshake error).
func serveTLS(t *testing.T, m *Manager) func(sni string) (*big.Int, error) {
	t.Helper()
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
			go func() {
				defer c.Close()
				_ = c.(*stdtls.Conn).Handshake()
			}()
		}
	}()
	return func(sni string) (*big.Int, error) {
		d := &net.Dialer{Timeout: 5 * time.Second}
		c, err := stdtls.DialWithDialer(d, "tcp", ln.Addr().String(), &stdtls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
	}
}

func newTestManager(t *testing.T, doc string) *Manager {
	t.Helper()
	return newTestManagerLog(t, doc, quietLog())
}

// newTestManagerLog is newTestManager logging to log.
func newTestManagerLog(t *testing.T, doc string, log *slog.Logger) *Manager {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(strings.ReplaceAll(doc, "DATA", t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); m.Stop() })
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestManualCertificateReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, certPath, keyPath, "manual.example", 1)
	rec := &logRecorder{}
	m := newTestManagerLog(t, `
global: {data_dir: DATA}
sites:
  - hosts: [manual.example]
    tls: {cert: `+certPath+`, key: `+keyPath+`}
    routes: [{respond: {}}]
`, slog.New(rec))
	handshake := serveTLS(t, m)
	if serial, err := handshake("manual.example"); err != nil || serial.Int64() != 1 {
		t.Fatalf("first certificate: serial %v, err %v", serial, err)
	}

	waitSerial := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			serial, err := handshake("manual.example")
			if err == nil && serial.Int64() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("serial %v (err %v), want %d", serial, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	writeSelfSigned(t, certPath, keyPath, "manual.example", 2)
	waitSerial(2)

	// A broken file is logged and the last good certificate keeps serving.
	// Wait until the watcher has seen it (it logs so), then check.
	const cannotLoad = "cannot be loaded"
	if n := rec.count(slog.LevelError, cannotLoad); n != 0 {
		t.Fatalf("%d %q errors before any broken file", n, cannotLoad)
	}
	if err := os.WriteFile(certPath, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec.count(slog.LevelError, cannotLoad) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never reported the broken file; logged: %q", rec.messages())
		}
		time.Sleep(manualPollInterval / 5)
	}
	for range 3 {
		if serial, err := handshake("manual.example"); err != nil || serial.Int64() != 2 {
			t.Fatalf("after a broken file: serial %v, err %v; want 2", serial, err)
		}
	}
	writeSelfSigned(t, certPath, keyPath, "manual.example", 3)
	waitSerial(3)
}

func TestManualCertificateMissingIsAnError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, certPath, keyPath, "m.example", 1)
	cfg, err := config.Parse("t.yaml", []byte(`
global: {data_dir: `+t.TempDir()+`}
sites: [{hosts: [m.example], tls: {cert: `+certPath+`, key: `+keyPath+`}, routes: [{respond: {}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	// The files vanish between validation and start (validation checks them too).
	if err := os.Remove(certPath); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), certPath) {
		t.Fatalf("Start = %v, want an error naming the file", err)
	}
}

func TestInternalSiteAndUnknownName(t *testing.T) {
	t.Parallel()
	m := newTestManager(t, `
global: {data_dir: DATA}
sites:
  - hosts: [app.localhost, svc.internal]
    tls: auto          # local names go to the internal CA by themselves
    routes: [{respond: {}}]
`)
	if m.RootCertPath() == "" {
		t.Fatal("no internal CA root")
	}
	pemBytes, err := os.ReadFile(m.RootCertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	ln, err := stdtls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = c.(*stdtls.Conn).Handshake() }()
		}
	}()
	dial := func(sni string) error {
		c, err := stdtls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
			&stdtls.Config{ServerName: sni, RootCAs: roots})
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, name := range []string{"app.localhost", "svc.internal"} {
		deadline := time.Now().Add(10 * time.Second)
		for err := dial(name); err != nil; err = dial(name) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := dial("random.example"); err == nil {
		t.Fatal("handshake for a name of no site succeeded")
	}
}
