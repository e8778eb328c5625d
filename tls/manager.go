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
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

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
	issuer   *certmagic.ACMEIssuer
	ca       *InternalCA // nil until a site needs it

	sites  siteIndex
	manual *manualCerts
	cancel context.CancelFunc
}

// NewManager prepares certificate management for cfg without touching the
// network. Storage is CertMagic's file storage in data_dir (0700 dirs, 0600
// files); the internal CA lives in data_dir/pki.
func NewManager(cfg *config.Config, log *slog.Logger) (*Manager, error) {
	g := cfg.Global
	if err := os.MkdirAll(g.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data_dir: %w", err)
	}
	m := &Manager{
		log:     log,
		cfg:     cfg,
		storage: &certmagic.FileStorage{Path: filepath.Join(g.DataDir, "certmagic")},
		sites:   newSiteIndex(cfg.Sites),
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
		ca, err := LoadOrCreateCA(filepath.Join(g.DataDir, "pki"))
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
		policy := NewOnDemandPolicy(g.OnDemand, func(name string) bool {
			return m.sites.modeFor(name) == config.TLSOnDemand
		}, nil, log.With("component", "on_demand"))
		m.onDemand = newCfg()
		odIssuers, err := m.acmeIssuers(m.onDemand, zl)
		if err != nil {
			m.cache.Stop()
			return nil, err
		}
		m.onDemand.Issuers = odIssuers
		m.onDemand.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: policy.Decide}
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
// OCSP stapling run until Stop. It never waits for a CA.
func (m *Manager) Start(ctx context.Context) error {
	ctx, m.cancel = context.WithCancel(ctx)
	if err := m.manual.load(ctx, m.cfg.Sites); err != nil {
		return err
	}
	go m.manual.watch(ctx)
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
	m.log.Info("certificate management started",
		"acme_names", acmeNames, "internal_names", internalNames, "acme_ca", m.cfg.Global.ACME.CA)
	return nil
}

// Stop ends background renewals and file watching.
func (m *Manager) Stop() {
	if m.cancel != nil {
		m.cancel()
	}
	m.cache.Stop()
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
// ALPN h2, http/1.1 and acme-tls/1 (TLS-ALPN-01), certificates chosen by SNI.
// HTTP/3 derives its own from it.
func (m *Manager) TLSConfig() *stdtls.Config {
	return &stdtls.Config{
		MinVersion:     stdtls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1", acmeTLSALPN},
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
// SNI name to the CertMagic config that manages it. ACME TLS-ALPN-01
// challenge handshakes are answered by any config (challenges are shared).
func (m *Manager) GetCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	cmCfg := m.configFor(hello.ServerName)
	cert, err := cmCfg.GetCertificate(hello)
	if err != nil {
		m.log.Debug("handshake without certificate", "sni", hello.ServerName, "error", err.Error())
		return nil, fmt.Errorf("%w: %q", ErrNoCertificate, hello.ServerName)
	}
	return cert, nil
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
