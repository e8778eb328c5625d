package upstream

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// Options configures NewProxy. The zero value is usable.
type Options struct {
	// Trusted are the peers allowed to set X-Forwarded-For, X-Forwarded-Proto,
	// X-Forwarded-Host (and so X-Real-IP). nil: trust nobody.
	Trusted *TrustedProxies
	// Logger receives forwarding failures (warn; client gone: info).
	// nil: slog.Default() at the time NewProxy is called.
	Logger *slog.Logger
	// The Host sent to backends comes from the pool's configuration
	// (config.Upstream.HostHeader); "" keeps the client's Host.

	// WebSocket limits the route's WebSocket tunnels. Zero fields take the
	// configuration defaults: IdleTimeout 10m, MaxTunnels 10000.
	WebSocket config.WebSocket
	// Tunnels is where the route's tunnels are counted (MaxTunnels applies
	// per RouteKey) and from which a server closes them at shutdown or
	// reload. nil: a Registry of this handler's own, which nobody else can
	// close.
	Tunnels *websocket.Registry
	// RouteKey names the route in Tunnels. "": the pool's name.
	RouteKey string
	// RouteName names the route in log lines. "": RouteKey.
	RouteName string
}

// Defaults for a zero config.WebSocket (config.Load fills in the same).
const (
	defaultWSIdleTimeout = 10 * time.Minute
	defaultWSMaxTunnels  = 10000
)

// proxy is the handler returned by NewProxy.
type proxy struct {
	pool    *Pool
	trusted *TrustedProxies
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	fwd     *forwarder

	// WebSocket settings (see Options; defaults applied).
	tunnels    *websocket.Registry
	routeKey   string
	routeName  string // for logs
	wsIdle     time.Duration
	maxTunnels int
}

// NewProxy returns the http.Handler that forwards requests to pool: it picks
// a backend with the pool's balancer (skipping unhealthy, ejected and full
// backends, queueing for a slot when all that are up are at max_conns),
// fails over and retries as the pool's retry rules allow (retry.go; never
// after a response byte reached the client), cleans hop-by-hop headers both
// ways (1xx responses included), sets X-Forwarded-For/-Proto/-Host,
// X-Real-IP and Via on requests and Via on responses, keeps the client's
// Host (unless the pool sets host_header) and the escaped path, forwards the
// query as ReverseProxy cleans it (byte-identical unless it is malformed;
// see rewrite), streams bodies without buffering (but for small idempotent
// request bodies kept for a retry), flushes event streams and
// unknown-length responses at once, relays trailers and 1xx responses, and
// maps failures to 502, 504, 499, or 503 with Retry-After when no backend
// can take the request, with a short plain-text body (details go to
// opts.Logger only). A failure after the response header was sent aborts
// the client connection (panic(http.ErrAbortHandler), which net/http
// recovers). For balance: ip_hash the client address is the request
// context's (WithClientIP), else ClientIP of the pool's PoolOptions.Trusted,
// else of opts.Trusted.
//
// WebSocket handshakes are passed through (websocket.go): an HTTP/1.1
// Upgrade: websocket request goes to the backend with Upgrade and
// Connection: Upgrade kept, and on the backend's 101 the client connection
// is hijacked and tunnelled to the backend connection; an HTTP/2 or HTTP/3
// extended CONNECT for websocket is translated into such a handshake. Each
// tunnel is reserved in opts.Tunnels under opts.RouteKey before the backend
// is contacted (over opts.WebSocket.MaxTunnels: 503 with Retry-After) and
// ends after opts.WebSocket.IdleTimeout without traffic. Other upgrades
// (h2c) are ordinary requests: their Upgrade is hop-by-hop and removed.
// Any other CONNECT gets 400.
//
// pool must not be nil. The handler is safe for concurrent use; it never
// modifies the incoming request.
func NewProxy(pool *Pool, opts Options) http.Handler {
	if pool == nil {
		panic("upstream: NewProxy called with a nil pool")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &proxy{
		pool: pool, trusted: opts.Trusted, log: log,
		fwd:        &forwarder{pool: pool, log: log},
		tunnels:    opts.Tunnels,
		routeKey:   opts.RouteKey,
		wsIdle:     durationOr(opts.WebSocket.IdleTimeout, defaultWSIdleTimeout),
		maxTunnels: opts.WebSocket.MaxTunnels,
	}
	if p.tunnels == nil {
		p.tunnels = websocket.NewRegistry()
	}
	if p.routeKey == "" {
		p.routeKey = pool.Name
	}
	p.routeName = opts.RouteName
	if p.routeName == "" {
		p.routeName = p.routeKey
	}
	if p.maxTunnels <= 0 {
		p.maxTunnels = defaultWSMaxTunnels
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: p.fwd,
		// 0 with ReverseProxy's special cases: text/event-stream and
		// responses of unknown length (ContentLength -1) flush after every
		// write; everything else is written through net/http's buffer.
		FlushInterval:  0,
		ErrorLog:       slog.NewLogLogger(log.With("pool", pool.Name).Handler(), slog.LevelWarn),
		BufferPool:     bufferPool{},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.handleError,
	}
	return p
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.pool.needsClientIP {
		// balance: ip_hash hashes the client address as resolved through
		// the trusted proxies; a context that already carries one (see
		// WithClientIP) is taken as is.
		if _, ok := ClientIPFromContext(r.Context()); !ok {
			t := p.pool.trusted
			if t == nil {
				t = p.trusted
			}
			r = r.WithContext(WithClientIP(r.Context(), t.ClientIP(r)))
		}
	}
	switch {
	case websocket.IsUpgrade(r):
		p.serveUpgrade(w, r) // HTTP/1.1 WebSocket handshake (websocket.go)
	case r.Method == http.MethodConnect:
		p.serveConnect(w, r) // HTTP/2 or HTTP/3 extended CONNECT (websocket.go)
	default:
		p.rp.ServeHTTP(&informationalWriter{ResponseWriter: w}, r)
	}
}

// informationalWriter is the ResponseWriter ReverseProxy writes to. It
// cleans 1xx responses, which ReverseProxy relays from an httptrace
// Got1xxResponse hook (copying the backend's header into Header() and
// calling WriteHeader) without ever showing them to ModifyResponse: before a
// 1xx (other than 101) goes out, hop-by-hop fields and Alt-Svc are removed,
// as modifyResponse does for the final response. Everything else passes
// through: Header() is the underlying map (ReverseProxy writes trailers into
// it after the body), and flushing and hijacking are reached through Unwrap,
// which is how ReverseProxy asks for them (http.NewResponseController).
type informationalWriter struct {
	http.ResponseWriter
}

func (w *informationalWriter) WriteHeader(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		h := w.ResponseWriter.Header()
		RemoveHopHeaders(h)
		delete(h, "Alt-Svc")
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.NewResponseController reach Flush, Hijack and deadlines.
func (w *informationalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// rewrite turns the clone ReverseProxy made of the client's request into the
// request for the backend. ReverseProxy has already removed hop-by-hop
// headers and Forwarded/X-Forwarded-*, re-added "TE: trailers" if the client
// sent it, and cleaned the query; the forwarder fills in the backend's
// scheme and host per attempt.
//
// The query is left as ReverseProxy cleaned it (the fix for CVE-2022-2880):
// a query with a semicolon or a malformed %-escape anywhere (or more than
// 10000 parameters) is parsed and re-encoded, dropping the pieces that do not
// parse, so that Gatehouse and the backend cannot read different parameters
// from one query string. Any other query reaches the backend byte-identical.
func (p *proxy) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	// Ours is the authoritative cleaning: ReverseProxy re-adds Connection and
	// Upgrade for upgrade requests, but the only upgrade Gatehouse performs
	// (WebSocket) never goes through ReverseProxy, so any other (h2c, TLS/1.0)
	// is hop-by-hop and goes.
	RemoveRequestHopHeaders(out.Header)

	u := out.URL
	u.Scheme, u.Host, u.User, u.Fragment, u.RawFragment = "http", "", nil, "", ""
	u.Path, u.RawPath = in.URL.Path, in.URL.RawPath // backend URLs have no path
	if u.Path == "" && u.Opaque == "" {
		u.Path = "/"
	}

	// Request trailers: the server fills in.Trailer once the body has been
	// read to the end, which the transport does just before sending the
	// trailer. ReverseProxy's clone of the map would stay empty.
	out.Trailer = in.Trailer

	if p.pool.hostHeader != "" {
		out.Host = p.pool.hostHeader
	} else {
		out.Host = in.Host
	}
	setForwardingHeaders(out, in, p.trusted)
}

// modifyResponse cleans a backend response before it is copied to the
// client: hop-by-hop headers and Alt-Svc (the backend's alternative services
// are not ours) go; Server and everything else stay. Our Via entry, with the
// version of the backend's response, is appended to any Via the backend
// sent (RFC 9110 §7.6.3). (1xx responses are cleaned by informationalWriter.)
func (p *proxy) modifyResponse(res *http.Response) error {
	if res.StatusCode == http.StatusSwitchingProtocols {
		return errUnexpectedUpgrade // nothing that goes through ReverseProxy asks to switch
	}
	cleanResponseHeader(res)
	return nil
}

// cleanResponseHeader is modifyResponse's cleaning, shared with the
// WebSocket path.
func cleanResponseHeader(res *http.Response) {
	RemoveHopHeaders(res.Header)
	delete(res.Header, "Alt-Svc")
	via := viaEntry(res.ProtoMajor, res.ProtoMinor)
	if prior := res.Header["Via"]; len(prior) > 0 {
		via = strings.Join(prior, ", ") + ", " + via
	}
	res.Header["Via"] = []string{via}
}

// handleError answers a request that could not be forwarded. ReverseProxy
// calls it only before anything of the response was written.
func (p *proxy) handleError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusForError(r.Context(), err)
	if status == http.StatusServiceUnavailable {
		if ra := retryAfter(err); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
	}
	attrs := []slog.Attr{
		slog.String("pool", p.pool.Name),
		slog.String("backend", backendName(err)),
		slog.Any("error", err),
		slog.Int("status", status),
	}
	switch {
	case status == StatusClientClosedRequest:
		p.log.LogAttrs(r.Context(), slog.LevelInfo, "client went away before the backend answered", attrs...)
	case errors.Is(err, ErrNoBackend):
		p.log.LogAttrs(r.Context(), slog.LevelWarn, "no backend available", attrs...)
	default:
		p.log.LogAttrs(r.Context(), slog.LevelWarn, "forwarding to backend failed", attrs...)
	}
	writeError(w, status)
}

// copyBufferSize is the size of the buffers that stream response bodies.
const copyBufferSize = 32 << 10

var copyBuffers = sync.Pool{New: func() any { return new([copyBufferSize]byte) }}

// bufferPool is the httputil.BufferPool of 32 KiB copy buffers. It stores
// array pointers, so neither Get nor Put allocates.
type bufferPool struct{}

func (bufferPool) Get() []byte { return copyBuffers.Get().(*[copyBufferSize]byte)[:] }

func (bufferPool) Put(b []byte) {
	if cap(b) >= copyBufferSize {
		copyBuffers.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
	}
}
