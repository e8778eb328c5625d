package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Server owns the listeners and the current Runtime. Requests always run on
// the Runtime that was current when they arrived.
type Server struct {
	log *slog.Logger
	rt  atomic.Pointer[Runtime]

	httpSrv *http.Server
	httpLn  net.Listener
}

// New builds the first Runtime from cfg. Nothing listens until Listen.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	rt, err := NewRuntime(cfg, log)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log}
	s.rt.Store(rt)
	g := cfg.Global
	s.httpSrv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: g.Limits.ReadHeaderTimeout.D(),
		ReadTimeout:       g.Limits.ReadTimeout.D(),
		WriteTimeout:      g.Limits.WriteTimeout.D(),
		IdleTimeout:       g.Limits.IdleTimeout.D(),
		MaxHeaderBytes:    int(g.Limits.MaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// ServeHTTP hands the request to the current Runtime.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.rt.Load().ServeHTTP(w, r)
}

// Runtime returns the Runtime serving new requests.
func (s *Server) Runtime() *Runtime { return s.rt.Load() }

// Listen opens the listeners named by the config. Errors (port in use,
// permission denied) are returned before anything is served.
func (s *Server) Listen() error {
	g := s.rt.Load().Config.Global
	addr := net.JoinHostPort(g.Listen, strconv.Itoa(g.HTTPPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	s.httpLn = ln
	return nil
}

// Addr is the HTTP listener's address (after Listen).
func (s *Server) Addr() net.Addr { return s.httpLn.Addr() }

// Serve serves until ctx is cancelled, then shuts down gracefully: the
// listeners close at once, in-flight requests get shutdown_timeout to finish,
// and whatever remains is closed. It returns nil after a clean or timed-out
// shutdown and an error only if serving failed.
func (s *Server) Serve(ctx context.Context) error {
	if s.httpLn == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- s.httpSrv.Serve(s.httpLn) }()
	s.log.Info("serving", "http", s.httpLn.Addr().String())

	select {
	case err := <-errc:
		s.rt.Load().Close()
		return fmt.Errorf("http listener: %w", err)
	case <-ctx.Done():
	}

	timeout := s.rt.Load().Config.Global.ShutdownTimeout.D()
	s.log.Info("shutting down", "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := s.httpSrv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("shutdown timeout reached; closing remaining connections")
		_ = s.httpSrv.Close()
	}
	<-errc // Serve has returned http.ErrServerClosed
	s.rt.Load().Close()
	s.log.Info("stopped")
	return nil
}

// Reload builds a Runtime from cfg and swaps it in. On error the current
// Runtime keeps serving untouched. Listener settings (ports, listen address,
// server limits) need a restart; a change to them is logged and ignored.
func (s *Server) Reload(cfg *config.Config) error {
	start := time.Now()
	rt, err := NewRuntime(cfg, s.log)
	if err != nil {
		return err
	}
	old := s.rt.Swap(rt)
	og, ng := old.Config.Global, cfg.Global
	if og.Listen != ng.Listen || og.HTTPPort != ng.HTTPPort || og.HTTPSPort != ng.HTTPSPort || og.Limits != ng.Limits {
		s.log.Warn("listener settings changed; they take effect after a restart")
	}
	old.Close()
	s.log.Info("config reloaded", "file", cfg.File, "took", time.Since(start).String())
	return nil
}
