package tls

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	stdtls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func caTestNew(t *testing.T) (*InternalCA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca, dir
}

func caTestKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func caTestCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
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

// caTestChain parses an issued PEM chain into leaf, intermediates.
func caTestChain(t *testing.T, chainPEM []byte) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) != 2 {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", len(certs))
	}
	return certs[0], certs[1:]
}

// caTestServe runs a TLS server on 127.0.0.1 until the test ends and returns its address.
func caTestServe(t *testing.T, cfg *stdtls.Config) string {
	t.Helper()
	ln, err := stdtls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_ = c.(*stdtls.Conn).Handshake() // failures are the client's to report
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func caTestDial(addr string, cfg *stdtls.Config) (*x509.Certificate, error) {
	d := &stdtls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*stdtls.Conn).ConnectionState().PeerCertificates[0], nil
}

func TestInternalCACreateThenLoad(t *testing.T) {
	t.Parallel()
	ca, dir := caTestNew(t)

	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	wantModes := map[string]os.FileMode{
		caRootCertFile: 0o644, caRootKeyFile: 0o600,
		caInterCertFile: 0o644, caInterKeyFile: 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(wantModes) {
		t.Errorf("dir holds %d entries, want %d (leftover temp files?)", len(entries), len(wantModes))
	}
	for name, mode := range wantModes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if ca.RootPath() != filepath.Join(dir, "root.crt") {
		t.Errorf("RootPath = %q", ca.RootPath())
	}
	if got := ca.IssuerKey(); got != "gatehouse-internal" {
		t.Errorf("IssuerKey = %q", got)
	}

	root := ca.Root()
	if !strings.HasPrefix(root.Subject.CommonName, caRootCNPrefix) || len(root.Subject.CommonName) != len(caRootCNPrefix)+6 {
		t.Errorf("root CN = %q", root.Subject.CommonName)
	}
	if !root.IsCA || root.MaxPathLen != 1 || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root: IsCA=%v MaxPathLen=%d KeyUsage=%v", root.IsCA, root.MaxPathLen, root.KeyUsage)
	}
	if life := root.NotAfter.Sub(root.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("root lifetime = %v, want 10 years", life)
	}
	if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key is %T, want ECDSA P-256", root.PublicKey)
	}
	inter := ca.inter
	if inter.Subject.CommonName != caInterCN || !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate: CN=%q IsCA=%v MaxPathLen=%d zero=%v", inter.Subject.CommonName, inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by root: %v", err)
	}
	if life := inter.NotAfter.Sub(inter.NotBefore); life < 365*24*time.Hour || life > 367*24*time.Hour {
		t.Errorf("intermediate lifetime = %v, want 1 year", life)
	}

	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("loading again: %v", err)
	}
	if !bytes.Equal(again.Root().Raw, root.Raw) {
		t.Error("reloaded root differs from the created one")
	}
	if !bytes.Equal(again.inter.Raw, inter.Raw) {
		t.Error("reloaded intermediate differs (a fresh one should be kept)")
	}

	other, _ := caTestNew(t)
	if other.Root().Subject.CommonName == root.Subject.CommonName {
		t.Error("two installs share a root common name")
	}
}

func TestInternalCAIssue(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)
	ca.LeafLifetime = 2 * time.Hour

	key := caTestKey(t)
	csr := caTestCSR(t, key, &x509.CertificateRequest{
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	start := time.Now()
	issued, err := ca.Issue(context.Background(), csr)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if issued.Metadata != nil {
		t.Errorf("Metadata = %v, want nil", issued.Metadata)
	}
	leaf, inters := caTestChain(t, issued.Certificate)
	if !bytes.Equal(inters[0].Raw, ca.inter.Raw) {
		t.Error("second certificate of the chain is not the intermediate")
	}
	pool := x509.NewCertPool()
	for _, c := range inters {
		pool.AddCert(c)
	}
	for _, name := range []string{"localhost", "127.0.0.1"} {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: ca.RootPool(), Intermediates: pool, DNSName: name,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want DigitalSignature only for an EC key", leaf.KeyUsage)
	}
	if leaf.IsCA || leaf.Subject.CommonName != "localhost" {
		t.Errorf("leaf IsCA=%v CN=%q", leaf.IsCA, leaf.Subject.CommonName)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v", leaf.SerialNumber)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("leaf does not carry the CSR's public key")
	}
	if d := leaf.NotAfter.Sub(start.Add(2 * time.Hour)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("NotAfter is %v off now+LeafLifetime", d)
	}
	if d := start.Add(-time.Minute).Sub(leaf.NotBefore); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("NotBefore is %v off now-1m", d)
	}

	// A real handshake with the issued chain and key.
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := stdtls.X509KeyPair(issued.Certificate, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	addr := caTestServe(t, &stdtls.Config{Certificates: []stdtls.Certificate{pair}})
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := caTestDial(addr, &stdtls.Config{RootCAs: ca.RootPool(), ServerName: name}); err != nil {
			t.Errorf("client trusting the root, ServerName %s: %v", name, err)
		}
	}
	_, err = caTestDial(addr, &stdtls.Config{ServerName: "localhost"}) // system roots
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("client with system roots: err = %v, want unknown authority", err)
	}
}

func TestInternalCAIssueRSAKeyEncipherment(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	csr := caTestCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"app.internal"}})
	issued, err := ca.Issue(context.Background(), csr)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := caTestChain(t, issued.Certificate)
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, want)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != caDefaultLeafLifetime+time.Minute {
		t.Errorf("default lifetime = %v", d-time.Minute)
	}
}

func TestInternalCAIssueRejects(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)
	key := caTestKey(t)
	badSig := caTestCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"localhost"}})
	badSig.Signature = append([]byte(nil), badSig.Signature...)
	badSig.Signature[len(badSig.Signature)-1] ^= 0xff
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		csr  *x509.CertificateRequest
	}{
		{"no SANs", context.Background(), caTestCSR(t, key, &x509.CertificateRequest{})},
		{"only a CN", context.Background(), caTestCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "localhost"}})},
		{"bad signature", context.Background(), badSig},
		{"email SAN", context.Background(), caTestCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"localhost"}, EmailAddresses: []string{"a@b.local"}})},
		{"URI SAN", context.Background(), caTestCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"localhost"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "x"}}})},
		{"nil CSR", context.Background(), nil},
		{"canceled context", canceled, caTestCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"localhost"}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got, err := ca.Issue(tt.ctx, tt.csr); err == nil {
				t.Fatalf("Issue succeeded (%d bytes), want an error", len(got.Certificate))
			}
		})
	}
}

func TestInternalCAIssueConcurrent(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)
	csr := caTestCSR(t, caTestKey(t), &x509.CertificateRequest{DNSNames: []string{"a.local", "*.a.local"}})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := ca.Issue(context.Background(), csr)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestInternalCABrokenFiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		file    string // the file the error must name
		corrupt func(t *testing.T, dir string)
	}{
		{"corrupt root.key", caRootKeyFile, caTestWriteFn(caRootKeyFile, "not a key\n")},
		{"root.key of another CA", caRootKeyFile, func(t *testing.T, dir string) {
			_, otherDir := caTestNew(t)
			data, err := os.ReadFile(filepath.Join(otherDir, caRootKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			caTestWriteFn(caRootKeyFile, string(data))(t, dir)
		}},
		{"corrupt root.crt", caRootCertFile, caTestWriteFn(caRootCertFile, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")},
		{"missing root.crt", caRootCertFile, caTestRemoveFn(caRootCertFile)},
		{"missing root.key", caRootKeyFile, caTestRemoveFn(caRootKeyFile)},
		{"corrupt intermediate.crt", caInterCertFile, caTestWriteFn(caInterCertFile, "garbage")},
		{"corrupt intermediate.key", caInterKeyFile, caTestWriteFn(caInterKeyFile, "garbage")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, dir := caTestNew(t)
			tt.corrupt(t, dir)
			before := caTestSnapshot(t, dir)

			_, err := LoadOrCreateCA(dir)
			if err == nil {
				t.Fatal("LoadOrCreateCA succeeded, want an error")
			}
			if !strings.Contains(err.Error(), filepath.Join(dir, tt.file)) {
				t.Errorf("error %q does not name %s", err, tt.file)
			}
			after := caTestSnapshot(t, dir)
			if len(after) != len(before) {
				t.Errorf("files changed: before %d, after %d", len(before), len(after))
			}
			for name, data := range before {
				if !bytes.Equal(after[name], data) {
					t.Errorf("%s was modified", name)
				}
			}
		})
	}
}

func TestInternalCARotatesIntermediate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	yearAgoish := now.Add(-300 * 24 * time.Hour) // 65 days left of 365: inside the last third

	t.Run("on load", func(t *testing.T) {
		t.Parallel()
		ca, dir := caTestNew(t)
		old, oldKey, err := caSignIntermediate(ca.root, ca.rootKey, yearAgoish, yearAgoish.AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		if err := caWriteKey(filepath.Join(dir, caInterKeyFile), oldKey); err != nil {
			t.Fatal(err)
		}
		if err := caWriteFile(filepath.Join(dir, caInterCertFile), caCertPEM(old.Raw), 0o644); err != nil {
			t.Fatal(err)
		}
		again, err := LoadOrCreateCA(dir)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(again.inter.Raw, old.Raw) || again.inter.NotAfter.Before(now.AddDate(0, 11, 0)) {
			t.Fatal("ageing intermediate was not replaced")
		}
		if err := again.inter.CheckSignatureFrom(ca.Root()); err != nil {
			t.Errorf("new intermediate not signed by the existing root: %v", err)
		}
		onDisk, _, err := caReadCert(filepath.Join(dir, caInterCertFile))
		if err != nil || !bytes.Equal(onDisk.Raw, again.inter.Raw) {
			t.Errorf("new intermediate not written to disk (%v)", err)
		}
	})

	t.Run("missing intermediate", func(t *testing.T) {
		t.Parallel()
		ca, dir := caTestNew(t)
		for _, f := range []string{caInterCertFile, caInterKeyFile} {
			if err := os.Remove(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
		again, err := LoadOrCreateCA(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Root().Raw, ca.Root().Raw) || again.inter.CheckSignatureFrom(ca.Root()) != nil {
			t.Error("intermediate not re-signed by the same root")
		}
	})

	t.Run("during Issue", func(t *testing.T) {
		t.Parallel()
		ca, _ := caTestNew(t)
		old, oldKey, err := caSignIntermediate(ca.root, ca.rootKey, yearAgoish, yearAgoish.AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		ca.mu.Lock()
		ca.inter, ca.interKey, ca.interPEM = old, oldKey, caCertPEM(old.Raw)
		ca.mu.Unlock()
		csr := caTestCSR(t, caTestKey(t), &x509.CertificateRequest{DNSNames: []string{"localhost"}})
		issued, err := ca.Issue(context.Background(), csr)
		if err != nil {
			t.Fatal(err)
		}
		_, inters := caTestChain(t, issued.Certificate)
		if bytes.Equal(inters[0].Raw, old.Raw) {
			t.Error("Issue signed with the ageing intermediate")
		}
	})
}

func TestInternalCALeafCappedAtIntermediate(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)
	ca.LeafLifetime = 2 * 365 * 24 * time.Hour
	csr := caTestCSR(t, caTestKey(t), &x509.CertificateRequest{DNSNames: []string{"localhost"}})
	issued, err := ca.Issue(context.Background(), csr)
	if err != nil {
		t.Fatal(err)
	}
	leaf, inters := caTestChain(t, issued.Certificate)
	if !leaf.NotAfter.Equal(inters[0].NotAfter) {
		t.Errorf("leaf NotAfter %v, want the intermediate's %v", leaf.NotAfter, inters[0].NotAfter)
	}
}

// TestInternalCAWithCertMagic plugs the CA into a real CertMagic cache and config.
func TestInternalCAWithCertMagic(t *testing.T) {
	t.Parallel()
	ca, _ := caTestNew(t)

	var cfgPtr atomic.Pointer[certmagic.Config]
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfgPtr.Load(), nil },
		Logger:           zap.NewNop(),
	})
	t.Cleanup(cache.Stop)
	cfg := certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: t.TempDir()},
		Issuers: []certmagic.Issuer{ca},
		Logger:  zap.NewNop(),
	})
	cfgPtr.Store(cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cfg.ManageSync(ctx, []string{"localhost", "127.0.0.1"}); err != nil {
		t.Fatalf("ManageSync: %v", err)
	}

	addr := caTestServe(t, cfg.TLSConfig())
	for _, name := range []string{"localhost", "127.0.0.1"} {
		leaf, err := caTestDial(addr, &stdtls.Config{RootCAs: ca.RootPool(), ServerName: name})
		if err != nil {
			t.Fatalf("handshake with ServerName %s: %v", name, err)
		}
		if leaf.Issuer.CommonName != caInterCN {
			t.Errorf("served certificate issued by %q", leaf.Issuer.CommonName)
		}
	}
}

func TestIsInternalName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		want bool
	}{
		{"localhost", true},
		{"LOCALHOST", true},
		{"localhost.", true},
		{"*.localhost", true},
		{"app.localhost", true},
		{"a.b.LocalHost.", true},
		{"127.0.0.1", true},
		{"10.1.2.3", true},
		{"::1", true},
		{"[::1]", true},
		{"fe80::1", true},
		{"db.internal", true},
		{"*.internal", true},
		{"printer.local", true},
		{"Printer.LOCAL.", true},
		{"", false},
		{".", false},
		{"example.com", false},
		{"localhost.example.com", false},
		{"mylocalhost", false},
		{"internal", false},
		{"local", false},
		{"notlocal", false},
		{"example.internal.com", false},
		{"999.1.1.1", false},
		{"[::1", false},
	}
	for _, tt := range tests {
		if got := IsInternalName(tt.name); got != tt.want {
			t.Errorf("IsInternalName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func caTestWriteFn(file, data string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func caTestRemoveFn(file string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, file)); err != nil {
			t.Fatal(err)
		}
	}
}

func caTestSnapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte, len(entries))
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = data
	}
	return out
}
