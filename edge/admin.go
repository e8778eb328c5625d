package edge

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/upstream"
)

// The admin API is served on global.admin (loopback unless admin_public).
// It has no authentication: anyone who can reach it can purge the cache.
//
//	GET  /healthz                      200 "ok" while the server runs
//	GET  /upstreams                    pools, backends, health, in-flight, ejections (JSON)
//	GET  /cache                        cache statistics (JSON)
//	POST /cache/purge?url=URL          drop every stored variant of URL
//	POST /cache/purge?prefix=PREFIX    drop every stored URL starting with PREFIX
//	POST /reload                       reload the config file (as SIGHUP)
//	GET  /config                       the running config, secrets redacted (JSON)
//	POST /plan                         body: a config file; what a reload of it would change
//	GET  /metrics                      Prometheus metrics
//	GET  /debug/pprof/...              Go runtime profiles (net/http/pprof), as Caddy's admin API has
//
// Purge URLs are absolute: scheme, host as the client sent it (lower-cased)
// and the request target as received, e.g. https://example.com/a?b=1.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /upstreams", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.rt.Load().upstreamStatus())
	})
	mux.HandleFunc("GET /cache", func(w http.ResponseWriter, _ *http.Request) {
		if s.cache == nil {
			writeJSON(w, http.StatusOK, map[string]any{"enabled": false})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"enabled": true, "stats": s.cache.Stats()})
	})
	mux.HandleFunc("POST /cache/purge", s.purge)
	mux.HandleFunc("POST /reload", s.adminReload)
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, RedactedConfig(s.rt.Load().Config))
	})
	mux.HandleFunc("POST /plan", s.adminPlan)
	if s.metricsHandler != nil {
		mux.Handle("GET /metrics", s.metricsHandler)
	}
	// Profiles for performance work (bench/README.md): CPU profiles cost
	// the server while they run, so they are behind the same guard.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return adminGuard(mux, func() (string, bool) {
		g := s.rt.Load().Config.Global // admin_public may change on reload
		return g.Admin, g.AdminPublic
	})
}

// adminGuard keeps web pages away from the admin API. A page cannot reach
// it through DNS rebinding (a request whose Host is not a loopback address,
// "localhost" or the admin address itself gets 403, unless admin_public),
// nor by a cross-site form or fetch: unsafe methods from another origin are
// refused by net/http's CrossOriginProtection (Sec-Fetch-Site / Origin).
func adminGuard(next http.Handler, settings func() (addr string, public bool)) http.Handler {
	cop := http.NewCrossOriginProtection()
	guarded := cop.Handler(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr, public := settings()
		adminHost, _, _ := net.SplitHostPort(addr)
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if !public && !config.IsLoopbackHost(host) && !strings.EqualFold(host, adminHost) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "the admin API answers only requests for a loopback host"})
			return
		}
		guarded.ServeHTTP(w, r)
	})
}

// adminReload handles POST /reload: the same as SIGHUP, answered with the
// outcome: 200, 422 with every FILE:LINE:COL problem, or 409 when the
// change needs a restart or there is no file to reload.
func (s *Server) adminReload(w http.ResponseWriter, _ *http.Request) {
	err := s.ReloadSource("admin")
	var errs config.Errors
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"reloaded": true, "file": s.rt.Load().Config.File})
	case errors.As(err, &errs):
		list := make([]string, len(errs))
		for i, e := range errs {
			list[i] = e.Error()
		}
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"reloaded": false, "errors": list})
	case errors.Is(err, ErrNeedsRestart), errors.Is(err, ErrNoSource), errors.Is(err, ErrStopped):
		writeJSON(w, http.StatusConflict, map[string]any{"reloaded": false, "error": err.Error()})
	default:
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"reloaded": false, "error": err.Error()})
	}
}

// maxPlanBody bounds the YAML a POST /plan may send.
const maxPlanBody = 4 << 20

// adminPlan handles POST /plan: the body is a config file (YAML); the
// answer lists what reloading it would change against the running config,
// or its problems (422). `gatehouse validate` uses it. Nothing is applied.
func (s *Server) adminPlan(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPlanBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "config too large"})
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "config.yaml"
	}
	// Untrusted: ${VAR} is not expanded (answers would show the values)
	// and no file the config names is opened.
	next, err := config.ParseUntrusted(name, body)
	if err != nil {
		var errs config.Errors
		list := []string{err.Error()}
		if errors.As(err, &errs) {
			list = list[:0]
			for _, e := range errs {
				list = append(list, e.Error())
			}
		}
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"errors": list})
		return
	}
	plan := Plan(s.rt.Load().Config, next)
	if plan == nil {
		plan = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"plan": plan})
}

// purge handles POST /cache/purge?url=... or ?prefix=...
func (s *Server) purge(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	target, prefix := q.Get("url"), q.Get("prefix")
	if (target == "") == (prefix == "") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give exactly one of ?url=ABSOLUTE-URL or ?prefix=ABSOLUTE-URL-PREFIX"})
		return
	}
	raw := target + prefix
	if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "purge needs an absolute http(s) URL such as https://example.com/path"})
		return
	}
	n := 0
	if s.cache != nil {
		if target != "" {
			n = s.cache.PurgeURL(target)
		} else {
			n = s.cache.PurgePrefix(prefix)
		}
	}
	s.log.Info("cache purge", "url", target, "prefix", prefix, "purged", n)
	writeJSON(w, http.StatusOK, map[string]int{"purged": n})
}

// upstreamStatus lists the runtime's pools by name (inline pools included).
func (rt *Runtime) upstreamStatus() []upstream.PoolStatus {
	out := make([]upstream.PoolStatus, 0, len(rt.pools))
	for _, p := range rt.pools {
		out = append(out, p.Status())
	}
	slices.SortFunc(out, func(a, b upstream.PoolStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// newAdminServer builds the admin HTTP server (nil when admin is off).
func (s *Server) newAdminServer() *http.Server {
	return &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}
