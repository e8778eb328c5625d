package tls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// File names of the internal CA inside its directory.
const (
	caRootCertFile  = "root.crt"
	caRootKeyFile   = "root.key"
	caInterCertFile = "intermediate.crt"
	caInterKeyFile  = "intermediate.key"
)

const (
	caIssuerKey           = "gatehouse-internal"
	caRootCNPrefix        = "Gatehouse Local Root CA - "
	caInterCN             = "Gatehouse Local Intermediate CA"
	caDefaultLeafLifetime = 24 * time.Hour
	caClockSkew           = time.Minute
)

// caDiskMu serialises every write to CA files made by this process, so that two
// InternalCA values for the same directory (the old and the new runtime during a
// reload) never interleave the writes of an intermediate certificate and its key.
// Lock order: InternalCA.mu before caDiskMu.
var caDiskMu sync.Mutex

// InternalCA is Gatehouse's local certificate authority: a root and an intermediate created
// once in a directory (<data_dir>/pki), signing short-lived leaf certificates for names that
// no public CA will certify (localhost, IP addresses, *.internal, *.local).
//
// It implements certmagic.Issuer. All methods are safe for concurrent use; LeafLifetime must
// be set before the CA is shared with other goroutines.
type InternalCA struct {
	// LeafLifetime is the validity of issued leaf certificates. Zero means 24 hours. A
	// leaf never outlives the intermediate that signs it. It is read without locking, so
	// set it before the first call to Issue (tests shorten or lengthen it).
	LeafLifetime time.Duration

	dir     string
	root    *x509.Certificate // immutable after LoadOrCreateCA
	rootKey crypto.Signer     // immutable after LoadOrCreateCA

	mu       sync.Mutex // guards the three fields below; the intermediate rotates
	inter    *x509.Certificate
	interKey crypto.Signer
	interPEM []byte
}

var _ certmagic.Issuer = (*InternalCA)(nil)

// LoadOrCreateCA loads the CA from dir or creates it there.
//
// The directory holds root.crt, root.key, intermediate.crt and intermediate.key (PEM; keys
// in PKCS #8). It is created with mode 0700, or tightened to 0700 (with a warning through
// slog.Default) if it exists with group or other permission bits; keys are written 0600 and certificates 0644,
// each atomically (temporary file, then rename).
//
// A new root is created only when neither root.crt nor root.key exists. If one of them is
// missing, unreadable, corrupt, or they do not match, the error names the file and nothing
// is written: users may have trusted that root, so it is never silently replaced. An
// expired root is an error too. The intermediate is disposable: it is signed anew by the
// root when its files are missing, when it does not match its key or this root, and when
// it is within the last third of its lifetime (Issue checks that again later, for
// long-running processes). An intermediate file that exists but cannot be read or parsed
// is an error naming it.
//
// LoadOrCreateCA is safe to call from several goroutines.
func LoadOrCreateCA(dir string) (*InternalCA, error) {
	if dir == "" {
		return nil, errors.New("internal CA: no directory given")
	}
	caDiskMu.Lock()
	defer caDiskMu.Unlock()

	if err := ensurePrivateDir(dir, nil); err != nil {
		return nil, fmt.Errorf("internal CA: creating directory: %w", err)
	}
	ca := &InternalCA{dir: dir}
	now := time.Now()
	if err := ca.loadOrCreateRoot(now); err != nil {
		return nil, err
	}
	if err := ca.loadOrRotateIntermediate(now); err != nil {
		return nil, err
	}
	return ca, nil
}

// loadOrCreateRoot fills ca.root and ca.rootKey. The caller holds caDiskMu.
func (ca *InternalCA) loadOrCreateRoot(now time.Time) error {
	certPath := filepath.Join(ca.dir, caRootCertFile)
	keyPath := filepath.Join(ca.dir, caRootKeyFile)
	certExists, err := caFileExists(certPath)
	if err != nil {
		return err
	}
	keyExists, err := caFileExists(keyPath)
	if err != nil {
		return err
	}

	switch {
	case !certExists && !keyExists:
		root, key, err := caNewRoot(now)
		if err != nil {
			return err
		}
		// Key first: a crash in between leaves a key without a certificate, which
		// the next start reports instead of overwriting.
		if err := caWriteKey(keyPath, key); err != nil {
			return err
		}
		if err := caWriteFile(certPath, caCertPEM(root.Raw), 0o644); err != nil {
			return err
		}
		ca.root, ca.rootKey = root, key
		return nil
	case !certExists:
		return fmt.Errorf("internal CA: %s is missing but %s exists; restore it, or move the directory aside to create a new CA", certPath, keyPath)
	case !keyExists:
		return fmt.Errorf("internal CA: %s is missing but %s exists; restore it, or move the directory aside to create a new CA", keyPath, certPath)
	}

	root, _, err := caReadCert(certPath)
	if err != nil {
		return err
	}
	key, err := caReadKey(keyPath)
	if err != nil {
		return err
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		return fmt.Errorf("internal CA: %s is not a self-signed CA certificate", certPath)
	}
	if !caKeyMatches(root, key) {
		return fmt.Errorf("internal CA: %s does not match the public key in %s", keyPath, certPath)
	}
	if !now.Before(root.NotAfter) {
		return fmt.Errorf("internal CA: root certificate %s expired on %s; move the directory aside to create a new CA (clients must then trust the new root)",
			certPath, root.NotAfter.UTC().Format(time.RFC3339))
	}
	ca.root, ca.rootKey = root, key
	return nil
}

// loadOrRotateIntermediate fills the intermediate fields from disk, or signs a new
// intermediate when the stored one is missing, mismatched or ageing. The caller holds
// caDiskMu and is the only user of ca.
func (ca *InternalCA) loadOrRotateIntermediate(now time.Time) error {
	certPath := filepath.Join(ca.dir, caInterCertFile)
	keyPath := filepath.Join(ca.dir, caInterKeyFile)
	certExists, err := caFileExists(certPath)
	if err != nil {
		return err
	}
	keyExists, err := caFileExists(keyPath)
	if err != nil {
		return err
	}
	if certExists && keyExists {
		cert, certPEM, err := caReadCert(certPath)
		if err != nil {
			return err
		}
		key, err := caReadKey(keyPath)
		if err != nil {
			return err
		}
		if cert.IsCA && caKeyMatches(cert, key) && cert.CheckSignatureFrom(ca.root) == nil && !caNeedsRotation(cert, now) {
			ca.inter, ca.interKey, ca.interPEM = cert, key, certPEM
			return nil
		}
	}
	return ca.rotateIntermediate(now)
}

// rotateIntermediate signs a new intermediate with the root, writes it to disk and makes it
// current. The caller holds caDiskMu, and ca.mu if ca is shared.
func (ca *InternalCA) rotateIntermediate(now time.Time) error {
	notAfter := now.AddDate(1, 0, 0)
	if notAfter.After(ca.root.NotAfter) {
		notAfter = ca.root.NotAfter
	}
	cert, key, err := caSignIntermediate(ca.root, ca.rootKey, now.Add(-caClockSkew), notAfter)
	if err != nil {
		return err
	}
	certPEM := caCertPEM(cert.Raw)
	if err := caWriteKey(filepath.Join(ca.dir, caInterKeyFile), key); err != nil {
		return err
	}
	if err := caWriteFile(filepath.Join(ca.dir, caInterCertFile), certPEM, 0o644); err != nil {
		return err
	}
	ca.inter, ca.interKey, ca.interPEM = cert, key, certPEM
	return nil
}

// RootPath returns the path of the root certificate (dir/root.crt), the file users install
// in their trust stores. Safe for concurrent use.
func (ca *InternalCA) RootPath() string { return filepath.Join(ca.dir, caRootCertFile) }

// Root returns the root certificate. It never changes for the life of the CA; callers must
// not modify it. Safe for concurrent use.
func (ca *InternalCA) Root() *x509.Certificate { return ca.root }

// RootPool returns a new pool holding only the root certificate, for clients (health
// checks, tests) that should trust this CA. Each call returns a fresh pool the caller may
// modify. Safe for concurrent use.
func (ca *InternalCA) RootPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	return pool
}

// IssuerKey returns "gatehouse-internal", the name under which CertMagic stores the
// certificates this CA issues. Part of certmagic.Issuer; safe for concurrent use.
func (ca *InternalCA) IssuerKey() string { return caIssuerKey }

// Issue signs a leaf certificate for csr with the current intermediate. Part of
// certmagic.Issuer; safe for concurrent use.
//
// The CSR's signature must verify, and it must ask for at least one DNS name or IP address
// and for no e-mail or URI names; any such names are accepted (the caller decides which
// names use this issuer). The leaf carries the CSR's public key, a random 128-bit serial,
// NotBefore one minute in the past (clock skew), NotAfter LeafLifetime from now but no
// later than the intermediate's NotAfter, the ServerAuth extended key usage, and the first
// DNS name as its common name for old clients. The returned Certificate is the PEM of the
// leaf followed by the intermediate; Metadata is nil.
//
// If the intermediate has entered the last third of its lifetime, Issue first rotates it
// (writing the new one to disk); a failure to do so is returned.
func (ca *InternalCA) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := caCheckCSR(csr); err != nil {
		return nil, err
	}

	now := time.Now()
	inter, interKey, interPEM, err := ca.currentIntermediate(now)
	if err != nil {
		return nil, err
	}

	lifetime := ca.LeafLifetime
	if lifetime <= 0 {
		lifetime = caDefaultLeafLifetime
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(inter.NotAfter) {
		notAfter = inter.NotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          caSerial(),
		DNSNames:              csr.DNSNames,
		IPAddresses:           csr.IPAddresses,
		NotBefore:             now.Add(-caClockSkew),
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if len(csr.DNSNames) > 0 && len(csr.DNSNames[0]) <= 64 { // ub-common-name is 64
		tmpl.Subject.CommonName = csr.DNSNames[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, csr.PublicKey, interKey)
	if err != nil {
		return nil, fmt.Errorf("internal CA: signing certificate: %w", err)
	}
	chain := append(caCertPEM(der), interPEM...)
	return &certmagic.IssuedCertificate{Certificate: chain}, nil
}

// currentIntermediate returns the intermediate to sign with, rotating it first if it is
// ageing.
func (ca *InternalCA) currentIntermediate(now time.Time) (*x509.Certificate, crypto.Signer, []byte, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if caNeedsRotation(ca.inter, now) {
		caDiskMu.Lock()
		err := ca.rotateIntermediate(now)
		caDiskMu.Unlock()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("internal CA: renewing intermediate: %w", err)
		}
	}
	return ca.inter, ca.interKey, ca.interPEM, nil
}

// caCheckCSR reports why csr cannot be signed, or nil.
func caCheckCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return errors.New("internal CA: no certificate request")
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("internal CA: certificate request signature: %w", err)
	}
	if len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return errors.New("internal CA: certificate request asks for e-mail or URI names; only DNS names and IP addresses are allowed")
	}
	if len(csr.DNSNames) == 0 && len(csr.IPAddresses) == 0 {
		return errors.New("internal CA: certificate request has no DNS names or IP addresses")
	}
	for _, name := range csr.DNSNames {
		if name == "" {
			return errors.New("internal CA: certificate request has an empty DNS name")
		}
	}
	return nil
}

// caNeedsRotation reports whether cert is within the last third of its lifetime.
func caNeedsRotation(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return !now.Before(cert.NotAfter.Add(-life / 3))
}

// caNewRoot creates a self-signed root with a unique common name, valid for ten years.
func caNewRoot(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("internal CA: generating root key: %w", err)
	}
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix) // never fails
	tmpl := &x509.Certificate{
		SerialNumber: caSerial(),
		Subject: pkix.Name{
			CommonName:   caRootCNPrefix + hex.EncodeToString(suffix),
			Organization: []string{"Gatehouse"},
		},
		NotBefore:             now.Add(-caClockSkew),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert, err := caCreate(tmpl, tmpl, key.Public(), key, "root")
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// caSignIntermediate creates an intermediate CA key and certificate signed by root.
func caSignIntermediate(root *x509.Certificate, rootKey crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("internal CA: generating intermediate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: caSerial(),
		Subject: pkix.Name{
			CommonName:   caInterCN,
			Organization: []string{"Gatehouse"},
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert, err := caCreate(tmpl, root, key.Public(), rootKey, "intermediate")
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// caCreate signs tmpl with signer as parent and parses the result; what
// names the certificate in errors.
func caCreate(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, what string) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("internal CA: creating %s certificate: %w", what, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("internal CA: parsing new %s certificate: %w", what, err)
	}
	return cert, nil
}

// caSerial returns a random positive serial number of at most 128 bits.
func caSerial() *big.Int {
	b := make([]byte, 16)
	for {
		_, _ = rand.Read(b) // never fails
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n
		}
	}
}

func caKeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}

func caCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// caFileExists reports whether path exists. Any error other than "does not exist" is
// returned, so an unreadable file is never mistaken for a missing one.
func caFileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("internal CA: %w", err) // *PathError names the file
	}
}

// caReadCert reads the first CERTIFICATE block of a PEM file.
func caReadCert(path string) (*x509.Certificate, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("internal CA: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("internal CA: %s: no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("internal CA: %s: %w", path, err)
	}
	return cert, caCertPEM(block.Bytes), nil
}

// caReadKey reads a PEM private key (PKCS #8, or SEC 1 EC) that can sign.
func caReadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("internal CA: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("internal CA: %s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("internal CA: %s: unexpected PEM block %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("internal CA: %s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("internal CA: %s: key of type %T cannot sign", path, key)
	}
	return signer, nil
}

func caWriteKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("internal CA: encoding %s: %w", path, err)
	}
	return caWriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// caWriteFile replaces path atomically: it writes a temporary file in the same directory
// with mode perm, syncs it, and renames it over path.
func caWriteFile(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("internal CA: writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("internal CA: writing %s: %w", path, err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil { // persist the rename; best effort
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// IsInternalName reports whether name should get a certificate from the internal CA rather
// than a public one: "localhost" and names under ".localhost", IP addresses (v4 or v6,
// optionally in brackets), and names ending in ".internal" or ".local". Wildcards such as
// "*.localhost" count. Case is ignored, as is one trailing dot. Safe for concurrent use.
func IsInternalName(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return false
	}
	addr := name
	if strings.HasPrefix(addr, "[") && strings.HasSuffix(addr, "]") {
		addr = addr[1 : len(addr)-1]
	}
	if _, err := netip.ParseAddr(addr); err == nil {
		return true
	}
	return name == "localhost" ||
		strings.HasSuffix(name, ".localhost") ||
		strings.HasSuffix(name, ".internal") ||
		strings.HasSuffix(name, ".local")
}
