package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Defaults for a config.Upstream whose timeouts are zero (config.Load fills
// in the same values; tests and `gatehouse proxy` may not).
const (
	defaultDialTimeout           = 3 * time.Second
	defaultResponseHeaderTimeout = 30 * time.Second
	defaultIdleTimeout           = 90 * time.Second

	// maxIdleConnsPerHost bounds the idle keep-alive connections kept per
	// backend. It must cover the concurrency the proxy sees: a pool smaller
	// than the requests in flight closes connections on release and dials
	// new ones (with 64 HTTP/2 clients × 10 streams, 256 made the backend
	// spend its CPU on connection churn; bench/RESULTS.md). An idle
	// connection costs ~8 KiB of buffers here plus the kernel socket.
	maxIdleConnsPerHost   = 1024
	expectContinueTimeout = time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	tcpKeepAlive          = 30 * time.Second
)

// Pool is a named set of backends with its own keep-alive connection pool
// (one *http.Transport for http and https backends, plus a second one only
// when the pool has h2c backends: a transport speaks either HTTP/1 or
// prior-knowledge HTTP/2 over cleartext, not both), its balancer
// (balancer.go, hash.go, sticky.go), passive health (passive.go), retry
// policy and budget (retry.go) and, when configured, an active health
// checker (healthcheck.go).
//
// Lifecycle: NewPool builds a pool without starting anything (so that
// `gatehouse validate` can build pools); Start starts the health checker;
// Close stops it, waits for it to exit and closes idle connections.
//
// A Pool never changes shape after NewPool; Name and Backends must not be
// modified. All methods and the forwarder built on it are safe for
// concurrent use.
type Pool struct {
	// Name is the upstream's name from the configuration (for logs).
	Name string
	// Backends are the pool's servers in configuration order.
	Backends []*Backend

	balance       string // policy name, for Status
	balancer      Balancer
	sticky        *cookieBalancer // balance: cookie, for Set-Cookie
	needsClientIP bool            // balance: ip_hash
	trusted       *TrustedProxies // PoolOptions.Trusted, for ip_hash
	hostHeader    string          // config.Upstream.HostHeader; "" keeps the client's Host
	queue         time.Duration   // timeouts.queue: wait for a slot under max_conns
	slots         *slotSignal
	passive       *passive // nil: passive health off
	retries       retryPolicy
	health        *healthCheck // nil: no active checks
	log           *slog.Logger
	// clock is monotonic nanoseconds for ejections and the retry budget
	// (tests replace it before use).
	clock func() int64

	transports []interface{ CloseIdleConnections() } // for Close
	closed     atomic.Bool

	mu      sync.Mutex    // guards the checker's lifecycle below
	stopped bool          // Close was called
	cancel  func()        // stops the checker; nil until Start
	done    chan struct{} // closed when the checker exits
}

// PoolOptions configures NewPool. The zero value is usable.
type PoolOptions struct {
	// Logger receives backend state changes: active health transitions
	// (warn when a backend leaves rotation, info when it returns) and
	// passive ejections (warn). nil: slog.Default() at the time the pool
	// is built.
	Logger *slog.Logger
	// Trusted resolves the client address that balance: ip_hash hashes
	// (TrustedProxies.ClientIP), for requests whose context carries none
	// (see WithClientIP). nil: the proxy's Options.Trusted.
	Trusted *TrustedProxies
}

// epoch anchors the pools' monotonic clock.
var epoch = time.Now()

// monotonicNow is nanoseconds since epoch on the monotonic clock, so that
// ejections and budgets do not jump with the wall clock. It is never 0.
func monotonicNow() int64 { return int64(time.Since(epoch)) + 1 }

// NewPool builds the pool for u: its backends and transports (dial
// timeout, response-header timeout, idle-connection timeout, TLS from u.TLS,
// h2c), balancer (u.Balance; "" is round_robin), passive health, retry
// policy and health check configuration, with the options given (at most
// one PoolOptions; none: the zero value). It starts no goroutine: call
// Start to run active health checks. Zero timeouts take the configuration
// defaults (3s, 30s, 90s; queue 0 does not wait); zero health-check and
// passive-health durations, counts and status ranges too. A weight below 1
// counts as 1. It returns an error for a nil or empty upstream, an
// unsupported scheme, a backend URL with a path, an unknown balance, or an
// unreadable CA file.
func NewPool(u *config.Upstream, opts ...PoolOptions) (*Pool, error) {
	var o PoolOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if u == nil {
		return nil, errors.New("upstream: nil configuration")
	}
	if len(u.Backends) == 0 {
		return nil, fmt.Errorf("upstream %q: no backends", u.Name)
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Pool{
		Name: u.Name, hostHeader: u.HostHeader, log: log, clock: monotonicNow, trusted: o.Trusted,
		queue: max(u.Timeouts.Queue.D(), 0), slots: newSlotSignal(),
	}

	var needTLS, needH1, needH2C bool
	var errs []error
	for i, cb := range u.Backends {
		if cb == nil || cb.URL == nil {
			errs = append(errs, fmt.Errorf("upstream %q: backend %d: no url", u.Name, i))
			continue
		}
		switch cb.URL.Scheme {
		case "https":
			needTLS = true
			needH1 = true
		case "http":
			needH1 = true
		case "h2c":
			needH2C = true
		default:
			errs = append(errs, fmt.Errorf("upstream %q: backend %s: unsupported scheme %q (want http, https or h2c)",
				u.Name, cb.URL.Redacted(), cb.URL.Scheme))
		}
		if cb.URL.Host == "" {
			errs = append(errs, fmt.Errorf("upstream %q: backend %s: no host", u.Name, cb.URL.Redacted()))
		}
		if (cb.URL.Path != "" && cb.URL.Path != "/") || cb.URL.RawQuery != "" || cb.URL.Fragment != "" {
			errs = append(errs, fmt.Errorf("upstream %q: backend %s: url must not have a path, query or fragment",
				u.Name, cb.URL.Redacted()))
		}
	}
	var tlsCfg *tls.Config
	if needTLS {
		var err error
		if tlsCfg, err = newTLSConfig(u.TLS); err != nil {
			errs = append(errs, fmt.Errorf("upstream %q: %w", u.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	var h1, h2c *http.Transport
	var fast *fastH1 // plain-HTTP backends: h1 with an in-goroutine fast path
	if needH1 {
		h1 = newTransport(u.Timeouts, tlsCfg, false)
		fast = newFastH1(h1, h1.DialContext,
			durationOr(u.Timeouts.ResponseHeader, defaultResponseHeaderTimeout),
			durationOr(u.Timeouts.Idle, defaultIdleTimeout), maxIdleConnsPerHost)
		p.transports = append(p.transports, fast) // closes h1's idle connections too
	}
	if needH2C {
		h2c = newTransport(u.Timeouts, nil, true)
		p.transports = append(p.transports, h2c)
	}
	// WebSocket handshakes to h2c backends go over HTTP/1.1 on the same
	// address (servers that speak h2c by prior knowledge, such as Go's with
	// Protocols HTTP1 and UnencryptedHTTP2, normally speak HTTP/1.1 too):
	// through the HTTP/1 transport when there is one (its TLS settings apply
	// only to https URLs), else through one of their own.
	h2cUpgrade := h1
	if needH2C && h1 == nil {
		h2cUpgrade = newTransport(u.Timeouts, nil, false)
		p.transports = append(p.transports, h2cUpgrade)
	}

	for i, cb := range u.Backends {
		u := *cb.URL
		u.Path, u.RawPath = "", ""
		b := &Backend{
			URL: &u, Weight: max(cb.Weight, 1), name: u.Redacted(), scheme: u.Scheme, rt: h1, upgradeRT: h1,
			pool: p, idx: i, maxConns: int64(max(cb.MaxConns, 0)),
		}
		b.id, b.hash = stableID(&u)
		if u.Scheme == "http" {
			b.rt = fast
		}
		if u.Scheme == "h2c" {
			b.scheme, b.rt, b.upgradeRT = "http", h2c, h2cUpgrade
		}
		b.healthy.Store(true)
		p.Backends = append(p.Backends, b)
	}

	bal, err := newBalancer(u, p.Backends)
	if err != nil {
		p.closeTransports()
		return nil, fmt.Errorf("upstream %q: %w", u.Name, err)
	}
	p.balancer, p.balance = bal, u.Balance
	if p.balance == "" {
		p.balance = "round_robin"
	}
	p.sticky, _ = bal.(*cookieBalancer)
	p.needsClientIP = p.balance == "ip_hash"
	p.passive = newPassive(u.PassiveHealth, len(p.Backends))
	p.retries.init(u.Retries, p.clock())
	p.health = newHealthCheck(u.HealthCheck, u.HostHeader)
	return p, nil
}

// Start starts the pool's active health checker, if the configuration has
// a health_check: one goroutine that probes every backend each interval
// (with up to 10% jitter) and takes a backend out of rotation after fall
// failed probes in a row, back after rise passed ones. Start is a no-op
// without health checks, when already started, and after Close. Safe for
// concurrent use.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.health == nil || p.stopped || p.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	c := &checker{pool: p, hc: p.health, log: p.log}
	go func() {
		defer close(p.done)
		c.run(ctx)
	}()
}

// Close stops the health checker and waits for it to exit, then closes the
// pool's idle connections. Requests still in flight finish; requests
// forwarded through a closed pool are sent with Connection: close so that
// no new idle connection is kept, and connections returned by requests
// that were in flight at Close expire after the idle timeout. Close is
// safe to call more than once and concurrently with requests.
func (p *Pool) Close() {
	p.mu.Lock()
	p.stopped = true
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	p.closed.Store(true)
	if cancel != nil {
		cancel()
		<-done
	}
	p.closeTransports()
}

func (p *Pool) closeTransports() {
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// newTransport builds one keep-alive connection pool. Dial failures are
// marked as *dialError so that the forwarder knows nothing was sent.
// h2c selects prior-knowledge HTTP/2 over cleartext; otherwise HTTP/1.1,
// with HTTP/2 negotiated by ALPN on TLS connections.
func newTransport(to config.Timeouts, tlsCfg *tls.Config, h2c bool) *http.Transport {
	dialer := &net.Dialer{Timeout: durationOr(to.Dial, defaultDialTimeout), KeepAlive: tcpKeepAlive}
	var protos http.Protocols
	if h2c {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
		protos.SetHTTP2(true)
	}
	return &http.Transport{
		Proxy: nil, // never the environment's proxy
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &dialError{err: err}
			}
			return c, nil
		},
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: durationOr(to.ResponseHeader, defaultResponseHeaderTimeout),
		IdleConnTimeout:       durationOr(to.Idle, defaultIdleTimeout),
		MaxIdleConnsPerHost:   maxIdleConnsPerHost,
		ExpectContinueTimeout: expectContinueTimeout,
		// The body and Content-Encoding must reach the client unchanged:
		// no transparent gzip.
		DisableCompression: true,
		Protocols:          &protos,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second, // ping silent HTTP/2 connections
			PingTimeout:     15 * time.Second,
		},
	}
}

// newTLSConfig builds the client TLS configuration for https backends.
func newTLSConfig(c config.UpstreamTLS) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, // #nosec G402 -- explicit operator choice
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("reading tls ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %q: no PEM certificate found", c.CA)
		}
		cfg.RootCAs = roots
	}
	return cfg, nil
}

func durationOr(d config.Duration, def time.Duration) time.Duration {
	if d > 0 {
		return d.D()
	}
	return def
}
