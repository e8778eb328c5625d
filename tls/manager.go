// Package tls owns Gatehouse's certificates: CertMagic wiring for ACME
// (with a fallback CA), the internal CA for local names, manual certificate
// files (reloaded when they change) and the on-demand issuance gate. It hands
// the edge a *crypto/tls.Config whose GetCertificate picks the right source
// for each SNI name, and an HTTP-01 challenge handler. A config reload may
// change the sites, but not the global TLS settings, without a restart
// (Manager.Update, SameGlobalTLS).
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
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Manager obtains, renews, stores and serves the certificates of every TLS
// site of the config it was built with, or last updated to. Start it once;
// its methods are safe for concurrent use.
// A CA outage never stops it: certificates already in storage are served,
// and CertMagic retries issuance with backoff in the background.
//
// The sites can change while it runs (see [Manager.Update]): everything a
// handshake needs is one immutable *tlsState behind an atomic pointer, so
// the handshake path takes no lock.
type Manager struct {
	log     *slog.Logger
	zl      *zap.Logger
	opts    managerOptions
	cache   *certmagic.Cache
	storage certmagic.Storage

	acme   *certmagic.Config // tls: auto (public names) and manual certificates
	issuer *certmagic.ACMEIssuer
	alpn01 bool // the tls-alpn-01 challenge is enabled

	// state is what handshakes read: the site index and the CertMagic
	// configs serving it. Stored under mu and track.
	state  atomic.Pointer[tlsState]
	manual *manualCerts

	// mu serialises Start, Update and Stop and guards the fields below.
	mu       sync.Mutex
	cfg      *config.Config                // the config last applied
	ctx      context.Context               // the Manager's lifetime, set by Start
	cancel   context.CancelFunc            // ends ctx
	stopped  bool                          // Stop was called
	managing map[string]context.CancelFunc // managed name → end of its initial obtain

	// track guards onDemandNames and makes a state swap atomic with the
	// check of a freshly cached certificate against the state (see
	// cachedManaged). Never held on the handshake path of a cached
	// certificate.
	track         sync.Mutex
	onDemandNames map[string]*certmagic.Config // names with an on-demand certificate cached

	watchers sync.WaitGroup // the manual-file watcher
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
		log:           log,
		zl:            newZapLogger(log.With("component", "certmagic")),
		opts:          opts,
		cfg:           cfg,
		storage:       &certmagic.FileStorage{Path: filepath.Join(g.DataDir, "certmagic")},
		alpn01:        slices.Contains(g.ACME.Challenges, "tls-alpn-01"),
		managing:      map[string]context.CancelFunc{},
		onDemandNames: map[string]*certmagic.Config{},
	}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			return m.state.Load().configForCert(c), nil
		},
		Logger: m.zl,
	})
	m.acme = m.newCfg()
	issuers, err := m.acmeIssuers(g, m.acme)
	if err != nil {
		m.cache.Stop()
		return nil, err
	}
	m.acme.Issuers = issuers
	m.issuer = issuers[0].(*certmagic.ACMEIssuer)

	st, err := m.nextState(cfg, nil)
	if err != nil {
		m.cache.Stop()
		return nil, err
	}
	m.state.Store(st)
	m.manual = newManualCerts(m.acme, m.cache, log)
	return m, nil
}

// newCfg is a CertMagic config on the Manager's cache and storage whose
// freshly cached managed certificates are checked by cachedManaged.
func (m *Manager) newCfg(issuers ...certmagic.Issuer) *certmagic.Config {
	var cmCfg *certmagic.Config
	cmCfg = certmagic.New(m.cache, certmagic.Config{
		Storage: m.storage,
		Logger:  m.zl,
		Issuers: issuers,
		OnEvent: func(_ context.Context, event string, data map[string]any) error {
			if event == eventCachedManaged {
				sans, _ := data["sans"].([]string)
				m.cachedManaged(cmCfg, sans)
			}
			return nil
		},
		ShouldEmitFunc: func(event string) bool { return event == eventCachedManaged },
	})
	return cmCfg
}

// eventCachedManaged is the CertMagic event emitted after a managed
// certificate was put in the cache (loaded from storage or just obtained).
const eventCachedManaged = "cached_managed_cert"

// acmeIssuers builds the ACME issuer (and the fallback CA, tried when the
// first fails) for a CertMagic config. TestCA is set to the same directory
// so CertMagic can never fall back to a CA that was not configured.
func (m *Manager) acmeIssuers(g config.Global, cmCfg *certmagic.Config) ([]certmagic.Issuer, error) {
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
			Logger:                  m.zl,
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
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.stopped:
		return errNotRunning
	case m.ctx != nil:
		return errors.New("tls manager started twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	m.ctx, m.cancel = ctx, cancel
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	if err := m.manual.apply(ctx, m.cfg.Sites, nil); err != nil {
		return err
	}
	st := m.state.Load()
	m.manage(st, slices.Sorted(maps.Keys(st.managed)))
	// Last, once nothing can fail any more: the watcher is Stop's to end.
	m.watchers.Go(func() { m.manual.watch(ctx) })
	acmeNames, internalNames := st.sites.managedNames()
	m.log.Info("certificate management started",
		"acme_names", acmeNames, "internal_names", internalNames, "acme_ca", m.cfg.Global.ACME.CA)
	return nil
}

// errNotRunning: Update (or Start) on a Manager not started or stopped.
var errNotRunning = errors.New("tls manager not running")

// manage starts managing names with their config in st, each with its own
// context so that Update can cancel an initial obtain still in flight for a
// name it removes. Callers must hold m.mu, with m.ctx set.
func (m *Manager) manage(st *tlsState, names []string) {
	for _, name := range names {
		cmCfg := st.managed[name]
		ctx, cancel := context.WithCancel(m.ctx)
		if prev := m.managing[name]; prev != nil {
			prev()
		}
		m.managing[name] = cancel
		// ManageAsync only fails in its synchronous form.
		if err := cmCfg.ManageAsync(ctx, []string{name}); err != nil {
			m.log.Error("managing certificate", "name", name, "error", err.Error())
		}
	}
}

// Stop ends background renewals and file watching, and waits for the cache
// maintenance and the file watcher to return (an issuance CertMagic has in
// flight ends on its own, its context cancelled). Call it when done with the
// Manager: after Start returned, even with an error, or without Start. Later
// calls do nothing. It waits for an Update in progress.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() {
		m.mu.Lock()
		m.stopped = true
		cancel := m.cancel
		m.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		m.watchers.Wait()
		m.cache.Stop()
	})
}

// RootCertPath is the internal CA's root certificate file, "" while no site
// has needed the internal CA.
func (m *Manager) RootCertPath() string {
	if ca := m.state.Load().ca; ca != nil {
		return ca.RootPath()
	}
	return ""
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
// IP address the client connected to). A server name of no site fails at
// once, so that a certificate still cached for a site just removed by Update
// is never served. ACME TLS-ALPN-01 challenge handshakes are answered by any
// config (challenges are shared); a handshake offering acme-tls/1 for a name
// with no challenge in progress fails at once, logged at debug level only, so
// that no one can fill the logs with them. Lock-free: it reads one snapshot
// of the sites.
func (m *Manager) GetCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	challenge := false
	if slices.Contains(hello.SupportedProtos, acmeTLSALPN) {
		if _, active := certmagic.GetACMEChallenge(hello.ServerName); hello.ServerName == "" || !active {
			m.log.Debug("acme-tls/1 handshake without an active challenge", "sni", hello.ServerName, "remote", remoteAddr(hello))
			return nil, fmt.Errorf("%w: %q: no ACME challenge in progress", ErrNoCertificate, hello.ServerName)
		}
		challenge = true
	}
	st := m.state.Load()
	if !challenge && hello.ServerName != "" && st.sites.modeFor(hello.ServerName) == "" {
		m.log.Debug("handshake for a name of no site", "sni", hello.ServerName, "remote", remoteAddr(hello))
		return nil, fmt.Errorf("%w: %q", ErrNoCertificate, hello.ServerName)
	}
	cert, err := st.configForHello(hello).GetCertificate(hello)
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

// configForHello is the current state's configForHello.
func (m *Manager) configForHello(hello *stdtls.ClientHelloInfo) *certmagic.Config {
	return m.state.Load().configForHello(hello)
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
