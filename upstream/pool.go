package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
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

	maxIdleConnsPerHost   = 256
	expectContinueTimeout = time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	tcpKeepAlive          = 30 * time.Second

	// maxOrderLen bounds the precomputed weighted round-robin sequence.
	maxOrderLen = 4096
)

// Pool is a named set of backends with its own keep-alive connection pool:
// one *http.Transport for http and https backends, plus a second one only
// when the pool has h2c backends (a transport speaks either HTTP/1 or
// prior-knowledge HTTP/2 over cleartext, not both).
//
// A Pool is built once by NewPool and never changes shape; Name and Backends
// must not be modified afterwards. All methods and the forwarder built on it
// are safe for concurrent use.
type Pool struct {
	// Name is the upstream's name from the configuration (for logs).
	Name string
	// Backends are the pool's servers in configuration order.
	Backends []*Backend

	hostHeader string            // config.Upstream.HostHeader; "" keeps the client's Host
	order      []int             // smooth weighted round-robin sequence of indexes into Backends
	next       atomic.Uint64     // position in order
	transports []*http.Transport // for Close
	closed     atomic.Bool
}

// Backend is one server of a Pool. URL and Weight are fixed at NewPool; the
// hot-path state (in-flight count, health) is atomic, so a Backend is safe
// for concurrent use without locks.
type Backend struct {
	// URL is the backend's address: scheme http, https or h2c, and a host.
	URL *url.URL
	// Weight is the backend's share of round-robin picks (at least 1).
	Weight int

	inflight atomic.Int64
	healthy  atomic.Bool

	name   string            // URL for logs, userinfo redacted
	scheme string            // scheme on the wire: h2c travels as http
	rt     http.RoundTripper // the pool transport for this backend's scheme
	// upgradeRT carries WebSocket handshakes: rt itself for http and https
	// (net/http sends a request with Upgrade: websocket over HTTP/1.1 only,
	// never offering h2 in ALPN), an HTTP/1.1 transport for h2c backends,
	// whose prior-knowledge HTTP/2 transport cannot carry an Upgrade.
	upgradeRT http.RoundTripper
}

// Inflight is the number of requests currently forwarded to b whose
// response has not been fully relayed yet.
func (b *Backend) Inflight() int64 { return b.inflight.Load() }

// Healthy reports whether b may be picked. Backends start healthy.
func (b *Backend) Healthy() bool { return b.healthy.Load() }

// SetHealthy marks b as healthy or not; an unhealthy backend is skipped by
// the balancer while a healthy one exists. For health checkers.
func (b *Backend) SetHealthy(ok bool) { b.healthy.Store(ok) }

// String is the backend's URL (without credentials), for logs.
func (b *Backend) String() string { return b.name }

// NewPool builds the pool for u: its backends and transports (dial timeout,
// response-header timeout, idle-connection timeout, TLS from u.TLS, h2c).
// Zero timeouts take the configuration defaults (3s, 30s, 90s). A weight
// below 1 counts as 1. It returns an error for a nil or empty upstream, an
// unsupported scheme, a backend URL with a path, or an unreadable CA file.
func NewPool(u *config.Upstream) (*Pool, error) {
	if u == nil {
		return nil, errors.New("upstream: nil configuration")
	}
	if len(u.Backends) == 0 {
		return nil, fmt.Errorf("upstream %q: no backends", u.Name)
	}
	p := &Pool{Name: u.Name, hostHeader: u.HostHeader}

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
	if needH1 {
		h1 = newTransport(u.Timeouts, tlsCfg, false)
		p.transports = append(p.transports, h1)
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

	weights := make([]int, len(u.Backends))
	for i, cb := range u.Backends {
		u := *cb.URL
		u.Path, u.RawPath = "", ""
		b := &Backend{URL: &u, Weight: max(cb.Weight, 1), name: u.Redacted(), scheme: u.Scheme, rt: h1, upgradeRT: h1}
		if u.Scheme == "h2c" {
			b.scheme, b.rt, b.upgradeRT = "http", h2c, h2cUpgrade
		}
		b.healthy.Store(true)
		p.Backends = append(p.Backends, b)
		weights[i] = b.Weight
	}
	p.order = smoothOrder(weights)
	return p, nil
}

// Close closes the pool's idle connections. Requests still in flight finish;
// requests forwarded through a closed pool are sent with Connection: close
// so that no new idle connection is kept, and connections returned by
// requests that were in flight at Close expire after the idle timeout.
// Close is safe to call more than once and concurrently with requests.
func (p *Pool) Close() {
	p.closed.Store(true)
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// pick returns the index of the next backend in smooth weighted round-robin
// order, skipping unhealthy backends while a healthy one exists.
func (p *Pool) pick() int {
	n := p.next.Add(1) - 1
	i := p.order[n%uint64(len(p.order))]
	if p.Backends[i].healthy.Load() {
		return i
	}
	for j := 1; j < len(p.Backends); j++ {
		k := (i + j) % len(p.Backends)
		if p.Backends[k].healthy.Load() {
			return k
		}
	}
	return i
}

// smoothOrder returns one period of nginx's smooth weighted round-robin over
// weights (all >= 1): each index appears weight times, interleaved so that a
// heavy backend never gets a long run. Weights are reduced by their greatest
// common divisor and scaled down if the period would exceed maxOrderLen.
func smoothOrder(weights []int) []int {
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	total := 0
	w := make([]int, len(weights))
	for i, x := range weights {
		w[i] = x / g
		total += w[i]
	}
	if total > maxOrderLen {
		scaled := 0
		for i := range w {
			w[i] = max(w[i]*maxOrderLen/total, 1)
			scaled += w[i]
		}
		total = scaled
	}
	order := make([]int, 0, total)
	current := make([]int, len(w))
	for range total {
		best := 0
		for i := range w {
			current[i] += w[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		order = append(order, best)
	}
	return order
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
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
