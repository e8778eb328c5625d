package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/edge/metrics"
	"github.com/gatehouse-proxy/gatehouse/edge/middleware"
	gtls "github.com/gatehouse-proxy/gatehouse/tls"
	"github.com/gatehouse-proxy/gatehouse/upstream"
	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// Server owns the listeners, the certificate manager and the current
// Runtime. Requests always run on the Runtime that was current when they
// arrived.
type Server struct {
	log *slog.Logger
	rt  atomic.Pointer[Runtime]
	tls *gtls.Manager // nil when every site is tls: off
	// tunnels holds the WebSocket tunnels of every Runtime this server has
	// run: they outlive reloads, and shutdown closes them.
	tunnels *websocket.Registry
	// cache is the response cache shared by every site with cache: true;
	// it outlives reloads (nil when global.cache.max_size is 0).
	cache *cache.Cache

	httpSrv, httpsSrv, adminSrv *http.Server
	h3                          *http3.Server
	httpLn, httpsLn, adminLn    net.Listener
	udp                         net.PacketConn

	// mu orders Reload against the end of Serve: once stopped is set no
	// Runtime is started (its health checkers would never be stopped).
	mu      sync.Mutex
	stopped bool
	timers  []*time.Timer // pending tunnel closes after reloads

	source         func() (*config.Config, error) // see SetSource
	reloadMu       sync.Mutex                     // serialises ReloadSource
	observeReload  func(ok bool)                  // metrics hook; nil: none
	metricsHandler http.Handler                   // GET /metrics on the admin listener; nil: none
	metrics        *metrics.Metrics
}

// New builds the first Runtime and the certificate manager from cfg.
// Nothing listens until Listen and no CA is contacted until Serve.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	s := &Server{log: log, tunnels: websocket.NewRegistry()}
	if c := cfg.Global.Cache; c.MaxSize > 0 {
		var err error
		s.cache, err = cache.New(cache.Options{MaxSize: int64(c.MaxSize), MaxObjectSize: int64(c.MaxObjectSize), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("setting up the response cache: %w", err)
		}
	}
	s.metrics = metrics.New(metrics.Sources{
		Pools:   func() []upstream.PoolStatus { return s.rt.Load().upstreamStatus() },
		Tunnels: s.tunnels.Count,
		Cache: func() (cache.Stats, bool) {
			if s.cache == nil {
				return cache.Stats{}, false
			}
			return s.cache.Stats(), true
		},
		Certificates: s.certificateExpiries,
	})
	s.observeReload = s.metrics.Reload
	s.metricsHandler = s.metrics.Handler()
	rt, err := newRuntime(cfg, log, s.shared(), nil)
	if err != nil {
		s.closeCache()
		return nil, err
	}
	s.rt.Store(rt)
	if needsTLS(cfg) {
		if s.tls, err = gtls.NewManager(cfg, log); err != nil {
			rt.Close()
			s.closeCache()
			return nil, fmt.Errorf("setting up TLS: %w", err)
		}
	}
	s.httpSrv = s.newHTTPServer(http.HandlerFunc(s.serveHTTP))
	if cfg.Global.Admin != "" {
		s.adminSrv = s.newAdminServer()
	}
	if s.tls != nil {
		s.httpsSrv = s.newHTTPServer(http.HandlerFunc(s.serveHTTPS))
		s.httpsSrv.TLSConfig = s.tls.TLSConfig()
		if isOn(cfg.Global.HTTP3) {
			s.h3 = &http3.Server{
				Handler:        http.HandlerFunc(s.serveHTTPS),
				TLSConfig:      http3.ConfigureTLSConfig(s.tls.TLSConfig()),
				MaxHeaderBytes: int(cfg.Global.Limits.MaxHeaderBytes),
				IdleTimeout:    cfg.Global.Limits.IdleTimeout.D(),
				QUICConfig: &quic.Config{
					MaxIdleTimeout: 30 * time.Second,
					// Keep-alives let a quiet HTTP/3 WebSocket live until its
					// route's idle_timeout; http3.Server.IdleTimeout still
					// closes connections that have no open stream.
					KeepAlivePeriod:       15 * time.Second,
					MaxIncomingStreams:    250,
					MaxIncomingUniStreams: 16,
					Allow0RTT:             false, // replayable early data stays off
				},
				Logger: log.With("component", "http3"),
			}
		}
	}
	return s, nil
}

// shared is what every Runtime of s uses.
func (s *Server) shared() shared {
	return shared{tunnels: s.tunnels, cache: s.cache, observer: requestObserver{s.metrics}}
}

// requestObserver feeds the access log's view of each request to metrics.
type requestObserver struct{ m *metrics.Metrics }

func (o requestObserver) Start() { o.m.Inflight(1) }

func (o requestObserver) Done(r *http.Request, info *middleware.Info, status int, d time.Duration) {
	o.m.Inflight(-1)
	site, route := info.Site, info.Route
	if site == "" {
		site = "-" // no site matched (404/421): one series, not one per Host
	}
	if route == "" {
		route = "-"
	}
	o.m.ObserveRequest(site, route, metrics.ProtoLabel(r), status, d)
}

// certificateExpiries lists the managed certificates for the metrics gauge.
func (s *Server) certificateExpiries() []metrics.CertExpiry {
	if s.tls == nil {
		return nil
	}
	var out []metrics.CertExpiry
	for _, c := range s.tls.Expiries() {
		out = append(out, metrics.CertExpiry{Name: c.Name, NotAfter: c.NotAfter})
	}
	return out
}

func (s *Server) closeCache() {
	if s.cache != nil {
		s.cache.Close()
	}
}

// markStopped refuses later reloads (Serve is not running to own them).
func (s *Server) markStopped() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// Cache is the server's response cache (nil when global.cache.max_size is 0).
func (s *Server) Cache() *cache.Cache { return s.cache }

func needsTLS(cfg *config.Config) bool {
	for _, site := range cfg.Sites {
		if site.TLS.Mode != config.TLSOff {
			return true
		}
	}
	return false
}

func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	l := s.rt.Load().Config.Global.Limits
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeaderTimeout.D(),
		ReadTimeout:       l.ReadTimeout.D(),
		WriteTimeout:      l.WriteTimeout.D(),
		IdleTimeout:       l.IdleTimeout.D(),
		MaxHeaderBytes:    int(l.MaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return srv
}

// serveHTTP is the plain-HTTP listener: ACME HTTP-01 first, then the stack.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s.tls != nil && s.tls.HandleHTTPChallenge(w, r) {
		return
	}
	s.rt.Load().httpHandler.ServeHTTP(w, r)
}

// serveHTTPS serves TLS requests (h1, h2 and h3).
func (s *Server) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	s.rt.Load().handler.ServeHTTP(w, r)
}

// ServeHTTP hands a request to the current Runtime as if it came over HTTPS
// when r.TLS is set, else as the HTTP listener would.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS != nil {
		s.serveHTTPS(w, r)
		return
	}
	s.serveHTTP(w, r)
}

// Tunnels is the registry of the server's open WebSocket tunnels.
func (s *Server) Tunnels() *websocket.Registry { return s.tunnels }

// Runtime returns the Runtime serving new requests.
func (s *Server) Runtime() *Runtime { return s.rt.Load() }

// TLS returns the certificate manager (nil when every site is tls: off).
func (s *Server) TLS() *gtls.Manager { return s.tls }

// Listen opens the listeners named by the config: TCP http_port always, and
// for TLS sites TCP and UDP https_port. Errors (port in use, permission
// denied) are returned before anything is served.
func (s *Server) Listen() (err error) {
	g := s.rt.Load().Config.Global
	defer func() {
		if err != nil {
			s.closeListeners()
		}
	}()
	addr := net.JoinHostPort(g.Listen, strconv.Itoa(g.HTTPPort))
	if s.httpLn, err = net.Listen("tcp", addr); err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	if s.adminSrv != nil {
		if s.adminLn, err = net.Listen("tcp", g.Admin); err != nil {
			return fmt.Errorf("admin listener on %s: %w (set global.admin to another address or \"off\")", g.Admin, err)
		}
	}
	if s.tls == nil {
		return nil
	}
	addr = net.JoinHostPort(g.Listen, strconv.Itoa(g.HTTPSPort))
	if s.httpsLn, err = net.Listen("tcp", addr); err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	if s.h3 != nil {
		if s.udp, err = net.ListenPacket("udp", addr); err != nil {
			return fmt.Errorf("listening on udp %s: %w", addr, err)
		}
	}
	return nil
}

func (s *Server) closeListeners() {
	if s.httpLn != nil {
		_ = s.httpLn.Close()
	}
	if s.httpsLn != nil {
		_ = s.httpsLn.Close()
	}
	if s.udp != nil {
		_ = s.udp.Close()
	}
	if s.adminLn != nil {
		_ = s.adminLn.Close()
	}
}

// AdminAddr is the admin listener's address (after Listen), or nil.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// Addr is the HTTP listener's address (after Listen).
func (s *Server) Addr() net.Addr { return s.httpLn.Addr() }

// Serve serves until ctx is cancelled, then shuts down gracefully: the
// listeners close at once, in-flight requests (h1, h2 and h3) get
// shutdown_timeout to finish, and whatever remains is closed. It returns nil
// after a clean or timed-out shutdown and an error only if serving failed.
func (s *Server) Serve(ctx context.Context) error {
	if s.httpLn == nil {
		if err := s.Listen(); err != nil {
			s.markStopped()
			return err
		}
	}
	if s.tls != nil {
		// Certificates in storage load now; missing ones are obtained in the
		// background, so a CA outage never delays serving.
		if err := s.tls.Start(context.WithoutCancel(ctx)); err != nil {
			s.closeListeners()
			s.markStopped()
			return fmt.Errorf("starting certificate management: %w", err)
		}
		defer s.tls.Stop()
	}

	s.mu.Lock()
	s.rt.Load().Start()
	s.mu.Unlock()
	defer s.closeCache()

	errc := make(chan error, 4)
	running := 0
	start := func(name string, serve func() error) {
		running++
		go func() {
			err := serve()
			if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) {
				err = nil
			} else if err != nil {
				err = fmt.Errorf("%s listener: %w", name, err)
			}
			errc <- err
		}()
	}
	start("http", func() error { return s.httpSrv.Serve(s.httpLn) })
	attrs := []any{"http", s.httpLn.Addr().String()}
	if s.httpsLn != nil {
		start("https", func() error { return s.httpsSrv.ServeTLS(s.httpsLn, "", "") })
		attrs = append(attrs, "https", s.httpsLn.Addr().String())
	}
	if s.udp != nil {
		start("http3", func() error { return s.h3.Serve(s.udp) })
		attrs = append(attrs, "http3", s.udp.LocalAddr().String())
	}
	if s.adminLn != nil {
		start("admin", func() error { return s.adminSrv.Serve(s.adminLn) })
		attrs = append(attrs, "admin", s.adminLn.Addr().String())
	}
	s.log.Info("serving", attrs...)

	var failure error
	select {
	case failure = <-errc:
		running--
	case <-ctx.Done():
	}
	s.shutdown()
	for ; running > 0; running-- {
		if err := <-errc; err != nil && failure == nil {
			failure = err
		}
	}
	s.mu.Lock()
	s.stopped = true
	for _, t := range s.timers {
		t.Stop() // shutdown closed every tunnel already
	}
	s.mu.Unlock()
	s.rt.Load().Close()
	if failure != nil {
		return failure
	}
	s.log.Info("stopped")
	return nil
}

// shutdown stops accepting on every listener and lets in-flight requests
// finish within shutdown_timeout, then closes what remains.
//
// WebSocket tunnels are closed at once rather than after Shutdown: they never
// end by themselves, hijacked HTTP/1.1 ones are invisible to Shutdown and
// HTTP/2 and HTTP/3 ones would hold it up until the timeout. Closing the
// Registry also refuses upgrades still arriving (503), so none starts after.
func (s *Server) shutdown() {
	timeout := s.rt.Load().Config.Global.ShutdownTimeout.D()
	s.log.Info("shutting down", "timeout", timeout.String())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	graceful := func(shut func(context.Context) error, closeNow func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := shut(ctx); errors.Is(err, context.DeadlineExceeded) {
				s.log.Warn("shutdown timeout reached; closing remaining connections")
				_ = closeNow()
			}
		}()
	}
	graceful(s.httpSrv.Shutdown, s.httpSrv.Close)
	if s.httpsLn != nil {
		graceful(s.httpsSrv.Shutdown, s.httpsSrv.Close)
	}
	if s.udp != nil {
		graceful(s.h3.Shutdown, s.h3.Close)
	}
	if s.adminLn != nil {
		graceful(s.adminSrv.Shutdown, s.adminSrv.Close)
	}
	s.log.Info("closed websocket tunnels", "count", s.tunnels.Close())
	wg.Wait()
	if err := s.tunnels.Wait(ctx); err != nil {
		s.log.Warn("websocket tunnels still winding down", "count", s.tunnels.Count())
	}
	if s.udp != nil {
		_ = s.udp.Close() // http3.Server.Serve does not own a PacketConn it was given
	}
}

// Reload builds a Runtime from cfg and swaps it in. On error the current
// Runtime keeps serving untouched. Pools whose configuration is unchanged
// are carried over (connections, health and ejections kept); in-flight
// requests finish on the Runtime they started on; WebSocket tunnels of
// unchanged routes stay open and those of removed or changed routes are
// closed after global.reload_grace. Reloads are serialised. Listener settings (ports, listen address,
// server limits, http3) and changes to the TLS sites need a restart: such a
// reload fails with ErrNeedsRestart rather than half-apply.
func (s *Server) Reload(cfg *config.Config) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	cur := s.rt.Load()
	if why := needsRestart(cur.Config, cfg, s.tls != nil); why != "" {
		return fmt.Errorf("%w: %s; the previous config keeps serving", ErrNeedsRestart, why)
	}
	rt, err := newRuntime(cfg, s.log, s.shared(), cur)
	if err != nil {
		return err
	}
	if s.tls != nil {
		// New names are managed (in the background), removed ones dropped,
		// new manual pairs loaded; on error nothing changed.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := s.tls.Update(ctx, cfg)
		cancel()
		if err != nil {
			rt.Close()
			if errors.Is(err, gtls.ErrNeedsRestart) {
				return fmt.Errorf("%w: %w; the previous config keeps serving", ErrNeedsRestart, err)
			}
			return fmt.Errorf("updating certificates: %w; the previous config keeps serving", err)
		}
	}
	kept := rt.adopt(cur)
	rt.Start()
	s.rt.Store(rt)
	cur.Close()
	s.scheduleTunnelClose(cur, rt)
	s.log.Info("config reloaded", "file", cfg.File, "took", time.Since(start).String(),
		"pools_kept", len(kept), "pools_built", len(rt.pools)-len(kept))
	return nil
}

// scheduleTunnelClose closes, after global.reload_grace, the WebSocket
// tunnels of routes that old had and cur has not (removed routes, and
// routes whose upstream changed: their key changed). Tunnels of unchanged
// routes are left alone. Caller holds s.mu.
func (s *Server) scheduleTunnelClose(old, cur *Runtime) {
	gone := map[string]bool{}
	for k := range old.tunnelKeys {
		if !cur.tunnelKeys[k] {
			gone[k] = true
		}
	}
	if len(gone) == 0 {
		return
	}
	grace := cur.Config.Global.ReloadGrace.D()
	var t *time.Timer
	closeGone := func() {
		s.mu.Lock()
		live := s.rt.Load().tunnelKeys // a later reload may have put a route back
		s.timers = slices.DeleteFunc(s.timers, func(x *time.Timer) bool { return x == t })
		s.mu.Unlock()
		if n := s.tunnels.CloseMatching(func(k string) bool { return gone[k] && !live[k] }); n > 0 {
			s.log.Info("closed websocket tunnels of removed or changed routes", "count", n, "grace", grace.String())
		}
	}
	if grace <= 0 {
		n := s.tunnels.CloseMatching(func(k string) bool { return gone[k] })
		if n > 0 {
			s.log.Info("closed websocket tunnels of removed or changed routes", "count", n)
		}
		return
	}
	t = time.AfterFunc(grace, closeGone)
	s.timers = append(s.timers, t)
}

// ErrStopped is returned by Reload once Serve has returned.
var ErrStopped = errors.New("the server has stopped")

// ErrNeedsRestart is returned by Reload for changes it cannot apply in place.
var ErrNeedsRestart = errors.New("this change needs a restart")

// needsRestart says why b cannot replace a in place ("" when it can): the
// listeners, the HTTP/3 server, the admin listener, the cache and the
// certificate manager are built once at start, so their settings must not
// change (the set of TLS sites may: Manager.Update applies it).
//
// haveTLS says whether the HTTPS listener and certificate manager exist
// (they do once the process started with a TLS site, even if a reload
// removed every TLS site since).
func needsRestart(a, b *config.Config, haveTLS bool) string {
	ag, bg := a.Global, b.Global
	switch {
	case ag.Listen != bg.Listen || ag.HTTPPort != bg.HTTPPort || ag.HTTPSPort != bg.HTTPSPort:
		return "listen, http_port or https_port changed"
	case ag.Limits != bg.Limits:
		return "global.limits changed"
	case isOn(ag.HTTP3) != isOn(bg.HTTP3):
		return "global.http3 changed"
	case ag.Admin != bg.Admin:
		return "global.admin changed"
	case ag.Cache != bg.Cache:
		return "global.cache changed"
	case !haveTLS && needsTLS(b):
		return "the first TLS site needs the HTTPS listener and certificate manager, which start with the process"
	case needsTLS(a) && needsTLS(b):
		if why := gtls.SameGlobalTLS(a, b); why != "" {
			return why
		}
	}
	return ""
}
