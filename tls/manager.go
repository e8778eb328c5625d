// Package tls owns Gatehouse's certificates: CertMagic wiring for ACME
// (with a fallback CA), the internal CA for local names, manual certificate
// files (reloaded when they change) and the on-demand issuance gate. It hands
// the edge a *crypto/tls.Config whose GetCertificate picks the right source
// for each SNI name, and an HTTP-01 challenge handler.
//
// The standard crypto/tls is imported as stdtls throughout.
package tls

import (
	"context"
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Manager obtains, renews, stores and serves the certificates of every TLS
// site in one config. Start it once; its methods are safe for concurrent use.
// A CA outage never stops it: certificates already in storage are served,
// and CertMagic retries issuance with backoff in the background.
type Manager struct {
	log     *slog.Logger
	cfg     *config.Config
	cache   *certmagic.Cache
	storage certmagic.Storage

	acme     *certmagic.Config // tls: auto (public names) and manual certificates
	internal *certmagic.Config // tls: internal, and tls: auto for local names
	onDemand *certmagic.Config // tls: on_demand (nil when no site uses it)
	policy   *OnDemandPolicy   // nil when no site uses on_demand
	issuer   *certmagic.ACMEIssuer
	ca       *InternalCA // nil until a site needs it
	alpn01   bool        // the tls-alpn-01 challenge is enabled

	sites  siteIndex
	manual *manualCerts

	cancel   context.CancelFunc // set by Start
	watchers sync.WaitGroup     // the manual-file watcher
	stopOnce sync.Once
}

// managerOptions are hooks for tests; the zero value is what NewManager uses.
type managerOptions struct {
	// onDemandIssuers, when set, supplies the on-demand config's issuers
	// instead of the ACME CA(s), so tests can issue without a CA; it may
	// also adjust cmCfg. The Manager still wraps them with the issuance gate.
	onDemandIssuers func(cmCfg *certmagic.Config) []certmagic.Issuer
}

// NewManager prepares certificate management for cfg without touching the
// network. Storage is CertMagic's file storage in data_dir (0700 dirs, 0600
// files); the internal CA lives in data_dir/pki. A data_dir or pki directory
// that exists with group or other permissions is tightened to 0700, with a
// warning.
func NewManager(cfg *config.Config, log *slog.Logger) (*Manager, error) {
	return newManager(cfg, log, managerOptions{})
}

func newManager(cfg *config.Config, log *slog.Logger, opts managerOptions) (*Manager, error) {
	g := cfg.Global
	if err := ensurePrivateDir(g.DataDir, log); err != nil {
		return nil, fmt.Errorf("creating data_dir: %w", err)
	}
	m := &Manager{
		log:     log,
		cfg:     cfg,
		storage: &certmagic.FileStorage{Path: filepath.Join(g.DataDir, "certmagic")},
		sites:   newSiteIndex(cfg.Sites),
		alpn01:  slices.Contains(g.ACME.Challenges, "tls-alpn-01"),
	}
	zl := newZapLogger(log.With("component", "certmagic"))
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			if len(c.Names) == 0 {
				return m.acme, nil
			}
			return m.configFor(c.Names[0]), nil
		},
		Logger: zl,
	})
	newCfg := func(issuers ...certmagic.Issuer) *certmagic.Config {
		return certmagic.New(m.cache, certmagic.Config{Storage: m.storage, Logger: zl, Issuers: issuers})
	}

	m.acme = newCfg()
	issuers, err := m.acmeIssuers(m.acme, zl)
	if err != nil {
		m.cache.Stop()
		return nil, err
	}
	m.acme.Issuers = issuers
	m.issuer = issuers[0].(*certmagic.ACMEIssuer)

	if m.sites.needsInternalCA() {
		pki := filepath.Join(g.DataDir, "pki")
		if err := ensurePrivateDir(pki, log); err != nil {
			m.cache.Stop()
			return nil, fmt.Errorf("internal CA: %w", err)
		}
		ca, err := LoadOrCreateCA(pki)
		if err != nil {
			m.cache.Stop()
			return nil, fmt.Errorf("internal CA: %w", err)
		}
		m.ca = ca
		m.internal = newCfg(ca)
	} else {
		m.internal = m.acme
	}

	if m.sites.hasMode(config.TLSOnDemand) {
		m.policy = NewOnDemandPolicy(g.OnDemand, func(name string) bool {
			return m.sites.modeFor(name) == config.TLSOnDemand
		}, nil, log.With("component", "on_demand"))
		m.onDemand = newCfg()
		var odIssuers []certmagic.Issuer
		if opts.onDemandIssuers != nil {
			odIssuers = opts.onDemandIssuers(m.onDemand)
		} else if odIssuers, err = m.acmeIssuers(m.onDemand, zl); err != nil {
			m.cache.Stop()
			return nil, err
		}
		// Rate limits apply when a certificate is ordered, in the issuers;
		// the decision CertMagic also consults before loading or renewing a
		// stored certificate only checks the name and asks.
		m.onDemand.Issuers = wrapOnDemandIssuers(odIssuers, newOnDemandGate(m.policy))
		m.onDemand.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.decideOnDemand}
	}
	m.manual = newManualCerts(m.acme, m.cache, log)
	return m, nil
}

// acmeIssuers builds the ACME issuer (and the fallback CA, tried when the
// first fails) for a CertMagic config. TestCA is set to the same directory
// so CertMagic can never fall back to a CA that was not configured.
func (m *Manager) acmeIssuers(cmCfg *certmagic.Config, zl *zap.Logger) ([]certmagic.Issuer, error) {
	g := m.cfg.Global
	build := func(ca, caRoot string, eab *config.EAB) (*certmagic.ACMEIssuer, error) {
		var roots *x509.CertPool
		if caRoot != "" {
			pem, err := os.ReadFile(caRoot)
			if err != nil {
				return nil, fmt.Errorf("acme ca_root: %w", err)
			}
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("acme ca_root %s: no PEM certificates in it", caRoot)
			}
		}
		tmpl := certmagic.ACMEIssuer{
			CA:                      ca,
			TestCA:                  ca,
			Email:                   g.Email,
			Agreed:                  true,
			DisableHTTPChallenge:    !slices.Contains(g.ACME.Challenges, "http-01"),
			DisableTLSALPNChallenge: !slices.Contains(g.ACME.Challenges, "tls-alpn-01"),
			ListenHost:              g.Listen,
			AltHTTPPort:             g.HTTPPort,
			AltTLSALPNPort:          g.HTTPSPort,
			TrustedRoots:            roots,
			Logger:                  zl,
		}
		if eab != nil {
			tmpl.ExternalAccount = &acme.EAB{KeyID: eab.KeyID, MACKey: eab.MACKey}
		}
		return certmagic.NewACMEIssuer(cmCfg, tmpl), nil
	}
	first, err := build(g.ACME.CA, g.ACME.CARoot, g.ACME.EAB)
	if err != nil {
		return nil, err
	}
	issuers := []certmagic.Issuer{first}
	if f := g.ACME.Fallback; f != nil {
		second, err := build(f.CA, f.CARoot, f.EAB)
		if err != nil {
			return nil, fmt.Errorf("acme fallback: %w", err)
		}
		issuers = append(issuers, second)
	}
	return issuers, nil
}

// Start loads manual certificates (an unreadable one is an error) and starts
// managing every automatic name in the background: certificates in storage
// are loaded at once, missing ones are obtained asynchronously, renewals and
// OCSP stapling run until Stop. It never waits for a CA. Call Start once.
//
// Stop must be called whether or not Start succeeded (NewManager already
// started the certificate cache's maintenance goroutine). When Start fails it
// has cancelled whatever it had begun, and the file watcher is not running.
func (m *Manager) Start(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	if err := m.manual.load(ctx, m.cfg.Sites); err != nil {
		return err
	}
	acmeNames, internalNames := m.sites.managedNames()
	if len(internalNames) > 0 {
		if err := m.internal.ManageAsync(ctx, internalNames); err != nil {
			return fmt.Errorf("managing internal certificates: %w", err)
		}
	}
	if len(acmeNames) > 0 {
		if err := m.acme.ManageAsync(ctx, acmeNames); err != nil {
			return fmt.Errorf("managing certificates: %w", err)
		}
	}
	// Last, once nothing can fail any more: the watcher is Stop's to end.
	m.watchers.Go(func() { m.manual.watch(ctx) })
	m.log.Info("certificate management started",
		"acme_names", acmeNames, "internal_names", internalNames, "acme_ca", m.cfg.Global.ACME.CA)
	return nil
}

// Stop ends background renewals and file watching, and waits for the cache
// maintenance and the file watcher to return (an issuance CertMagic has in
// flight ends on its own, its context cancelled). Call it when done with the
// Manager: after Start returned, even with an error, or without Start. Later
// calls do nothing.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() {
		if m.cancel != nil {
			m.cancel()
		}
		m.watchers.Wait()
		m.cache.Stop()
	})
}

// RootCertPath is the internal CA's root certificate file, "" when no site
// uses the internal CA.
func (m *Manager) RootCertPath() string {
	if m.ca == nil {
		return ""
	}
	return m.ca.RootPath()
}

// TLSConfig is the server configuration for the TCP listener: TLS 1.2+,
// ALPN h2 and http/1.1, plus acme-tls/1 when the TLS-ALPN-01 challenge is
// enabled; certificates chosen by SNI. HTTP/3 derives its own from it.
func (m *Manager) TLSConfig() *stdtls.Config {
	protos := []string{"h2", "http/1.1"}
	if m.alpn01 {
		protos = append(protos, acmeTLSALPN)
	}
	return &stdtls.Config{
		MinVersion:     stdtls.VersionTLS12,
		NextProtos:     protos,
		GetCertificate: m.GetCertificate,
		// Modern AEAD suites only for TLS 1.2 (TLS 1.3 suites are fixed by Go).
		CipherSuites: []uint16{
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			stdtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			stdtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			stdtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			stdtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			stdtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

const acmeTLSALPN = "acme-tls/1"

// ErrNoCertificate is returned (and the handshake fails) for a name that has
// no certificate and may not get one now.
var ErrNoCertificate = errors.New("no certificate for this server name")

// GetCertificate returns the certificate for a handshake, dispatching on the
// SNI name to the CertMagic config that manages it (without SNI, on the local
// IP address the client connected to). ACME TLS-ALPN-01 challenge handshakes
// are answered by any config (challenges are shared); a handshake offering
// acme-tls/1 for a name with no challenge in progress fails at once, logged
// at debug level only, so that no one can fill the logs with them.
func (m *Manager) GetCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	if slices.Contains(hello.SupportedProtos, acmeTLSALPN) {
		if _, active := certmagic.GetACMEChallenge(hello.ServerName); hello.ServerName == "" || !active {
			m.log.Debug("acme-tls/1 handshake without an active challenge", "sni", hello.ServerName, "remote", remoteAddr(hello))
			return nil, fmt.Errorf("%w: %q: no ACME challenge in progress", ErrNoCertificate, hello.ServerName)
		}
	}
	cmCfg := m.configForHello(hello)
	cert, err := cmCfg.GetCertificate(hello)
	if err != nil {
		m.log.Debug("handshake without certificate", "sni", hello.ServerName, "error", err.Error())
		return nil, fmt.Errorf("%w: %q", ErrNoCertificate, hello.ServerName)
	}
	return cert, nil
}

func remoteAddr(hello *stdtls.ClientHelloInfo) string {
	if hello.Conn == nil {
		return ""
	}
	return hello.Conn.RemoteAddr().String()
}

// configForHello picks the CertMagic config for a handshake. With SNI it is
// configFor the name. Without SNI, CertMagic serves the certificate of the
// local IP address, so the config is chosen by that address, never the
// on-demand one: no one was asked about it. An address of no site (or of an
// on_demand site) gets the ACME config, which only serves cached certificates.
func (m *Manager) configForHello(hello *stdtls.ClientHelloInfo) *certmagic.Config {
	if hello.ServerName != "" {
		return m.configFor(hello.ServerName)
	}
	ip := localIP(hello.Conn)
	if ip == "" {
		return m.acme
	}
	if cmCfg := m.configFor(ip); cmCfg != m.onDemand {
		return cmCfg
	}
	return m.acme
}

// localIP is the address c was accepted on, in the form site hosts use
// (IPv4-mapped addresses unmapped, no zone), or "".
func localIP(c net.Conn) string {
	if c == nil || c.LocalAddr() == nil {
		return ""
	}
	addr := c.LocalAddr().String()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	return a.Unmap().WithZone("").String()
}

// configFor picks the CertMagic config for a server name.
func (m *Manager) configFor(name string) *certmagic.Config {
	name = canonicalName(name)
	switch m.sites.modeFor(name) {
	case config.TLSInternal:
		return m.internal
	case config.TLSAuto:
		if IsInternalName(name) {
			return m.internal
		}
	case config.TLSOnDemand:
		if m.onDemand != nil {
			return m.onDemand
		}
	}
	return m.acme
}

// decideOnDemand is the on-demand config's DecisionFunc, which CertMagic
// consults before obtaining, but also before loading a stored certificate
// and before renewing one. A name of an on_demand site whose certificate is
// already in storage is allowed without asking, so that stored certificates
// are served even while the ask endpoint is down; other names are asked
// about. Rate limits are not applied here but by the issuers (see
// onDemandGate), when a certificate is really ordered.
func (m *Manager) decideOnDemand(ctx context.Context, name string) error {
	name, err := m.policy.Eligible(name)
	if err != nil {
		return err
	}
	if m.storedOnDemand(ctx, name) {
		return nil
	}
	return m.policy.Decide(ctx, name)
}

// storedOnDemand reports whether storage holds a certificate for name from
// one of the on-demand config's issuers.
func (m *Manager) storedOnDemand(ctx context.Context, name string) bool {
	for _, iss := range m.onDemand.Issuers {
		if m.storage.Exists(ctx, certmagic.StorageKeys.SiteCert(iss.IssuerKey(), name)) {
			return true
		}
	}
	return false
}

// HandleHTTPChallenge answers an ACME HTTP-01 request and reports whether r
// was one. It must run before any redirect on the HTTP listener.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if !certmagic.LooksLikeHTTPChallenge(r) {
		return false
	}
	return m.issuer.HandleHTTPChallenge(w, r)
}

func canonicalName(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// ensurePrivateDir creates dir with mode 0700 or, when it already exists
// with group or other permission bits, tightens it to 0700 and logs a
// warning (a failure to tighten is only logged: the files inside are 0600).
// log nil means slog.Default().
func ensurePrivateDir(dir string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			log.Warn("directory holding private keys is accessible to other users and could not be restricted",
				"dir", dir, "mode", fmt.Sprintf("%#o", perm), "error", err.Error())
			return nil
		}
		log.Warn("directory holding private keys was accessible to other users; restricted it to 0700",
			"dir", dir, "previous_mode", fmt.Sprintf("%#o", perm))
	}
	return nil
}
