// Package edge owns Gatehouse's listeners, the fixed middleware stack, the
// live Runtime (router table + upstream pools) and its atomic replacement on
// reload, and graceful shutdown.
package edge

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/edge/middleware"
	"github.com/gatehouse-proxy/gatehouse/router"
	gtls "github.com/gatehouse-proxy/gatehouse/tls"
	"github.com/gatehouse-proxy/gatehouse/upstream"
	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// Runtime is everything built from one validated config: the router table,
// the upstream pools and the handler stack. It is immutable once built; a
// reload builds a new Runtime and swaps it in whole.
type Runtime struct {
	Config *config.Config
	table  *router.Table
	pools  map[string]*upstream.Pool
	// owned are the pools this Runtime starts and closes; a pool reused
	// from the previous Runtime becomes owned at adopt.
	owned map[string]bool
	// tunnelKeys are the Registry keys of the proxied routes.
	tunnelKeys map[string]bool
	// limiters are the routes' rate limiters by route and settings;
	// borrowed ones still belong to the previous Runtime until adopt.
	limiters map[string]*middleware.RateLimiter
	borrowed map[string]bool
	// stages is each route's per-site part of the fixed stack: security
	// headers → cache → route header edits → the route's action.
	stages map[*router.Route]http.Handler
	// handler serves HTTPS (h1, h2, h3); httpHandler serves the plain-HTTP
	// listener: tls: off sites, and a redirect to HTTPS for the others.
	handler     http.Handler
	httpHandler http.Handler
	altSvc      string // Alt-Svc value for h1/h2 responses of h3 sites; "" when h3 is off
}

// shared is what a Server's Runtimes share and outlive: the WebSocket
// tunnels (nil: a Registry of the Runtime's own), the response cache (nil:
// sites with cache: true are not cached) and the metrics observer (nil:
// none).
type shared struct {
	tunnels  *websocket.Registry
	cache    *cache.Cache
	observer middleware.Observer
}

// ErrUnsupported wraps configs that ask for features this build lacks.
var ErrUnsupported = errors.New("unsupported configuration")

// NewRuntime builds a Runtime from cfg. It fails on features this build
// cannot serve (cfg.Unsupported) and on pool or route construction errors.
// Its WebSocket tunnels are counted in a Registry of its own; a Server
// shares one Registry across all its Runtimes instead.
// It starts no goroutines (health checkers start with Start), so it can be
// used to check a config.
func NewRuntime(cfg *config.Config, log *slog.Logger) (*Runtime, error) {
	return newRuntime(cfg, log, shared{}, nil)
}

// newRuntime is NewRuntime with the Registry in which every proxied route
// counts its WebSocket tunnels, under the key routeKey(site, route), and the
// server's response cache (nil: sites with cache: true are not cached).
//
// prev, when not nil, is the Runtime being replaced: pools whose
// configuration (and trusted_proxies) did not change are taken over from it
// with their connections, health and ejection state (see adopt).
func newRuntime(cfg *config.Config, log *slog.Logger, sh shared, prev *Runtime) (*Runtime, error) {
	tunnels, c := sh.tunnels, sh.cache
	if tunnels == nil {
		tunnels = websocket.NewRegistry()
	}
	if errs := cfg.Unsupported(); len(errs) > 0 {
		return nil, fmt.Errorf("%w:\n%w", ErrUnsupported, errs)
	}
	rt := &Runtime{
		Config: cfg, pools: make(map[string]*upstream.Pool, len(cfg.Upstreams)),
		owned: make(map[string]bool), tunnelKeys: make(map[string]bool),
	}
	trusted := upstream.NewTrustedProxies(cfg.Global.TrustedProxies)
	for name, u := range cfg.Upstreams {
		if p := prev.reusablePool(name, cfg); p != nil {
			rt.pools[name] = p // owned by prev until adopt
			continue
		}
		p, err := upstream.NewPool(u, upstream.PoolOptions{Logger: log, Trusted: trusted})
		if err != nil {
			rt.Close()
			return nil, fmt.Errorf("building upstream %q: %w", name, err)
		}
		rt.pools[name] = p
		rt.owned[name] = true
	}
	table, err := router.New(cfg, func(site *config.Site, route *config.Route) (http.Handler, error) {
		pool := rt.pools[route.Upstream.Pool.Name]
		if pool == nil {
			return nil, fmt.Errorf("route %s: upstream %q not built", route.Path, route.Upstream.Pool.Name)
		}
		key := routeKey(site, route)
		rt.tunnelKeys[key] = true
		return upstream.NewProxy(pool, upstream.Options{
			Trusted:   trusted,
			Logger:    log,
			WebSocket: route.WebSocket,
			Tunnels:   tunnels,
			RouteKey:  key,
			RouteName: key[:strings.LastIndexByte(key, '#')], // without the fingerprint
		}), nil
	})
	if err != nil {
		rt.Close()
		return nil, fmt.Errorf("building routes: %w", err)
	}
	rt.table = table
	rt.stages = make(map[*router.Route]http.Handler)
	rt.limiters = make(map[string]*middleware.RateLimiter)
	rt.borrowed = make(map[string]bool)
	for route := range table.Routes() {
		h := siteStages(route, c)
		if h, err = rt.accessStages(route, h, trusted, prev); err != nil {
			rt.Close()
			return nil, fmt.Errorf("route %s: %w", route.Name, err)
		}
		rt.stages[route] = h
	}
	if g := cfg.Global; isOn(g.HTTP3) {
		rt.altSvc = fmt.Sprintf(`h3=":%d"; ma=86400`, g.HTTPSPort)
	}
	rt.handler = stack(rt.routeHandler(), log, trusted, sh.observer)
	rt.httpHandler = stack(rt.plainHTTPHandler(), log, trusted, sh.observer)
	return rt, nil
}

// routeKey names a route in the WebSocket Registry: the site's first host
// and the route's path, as router.Route.Name does. Limits count per key, so
// they carry over a reload that keeps the route.
//
// The key ends with a fingerprint of the route's upstream, auth and request
// header edits, so a reload that changes one of them gives the route a new key: tunnels
// under keys the new Runtime no longer has are closed after
// global.reload_grace, and those of unchanged routes stay open.
func routeKey(site *config.Site, route *config.Route) string {
	host, path := "", route.Path
	if len(site.Hosts) > 0 {
		host = site.Hosts[0]
	}
	if path == "" {
		path = "/"
	}
	return host + path + "#" + tunnelFingerprint(route)
}

// tunnelFingerprint is a short digest of what an open tunnel depends on:
// the upstream's configuration, the route's auth (a reload that revokes
// credentials must end the tunnels opened with them) and its request
// header edits.
func tunnelFingerprint(route *config.Route) string {
	b, _ := json.Marshal(struct { // plain data: cannot fail
		Upstream *config.Upstream
		Auth     *config.Auth
		Request  config.HeaderOps
	}{route.Upstream.Pool, route.Auth, route.Headers.Request})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// reusablePool returns prev's pool name when cfg configures it exactly as
// prev's config did (and trusted_proxies, which ip_hash uses, is the same);
// nil otherwise or when prev is nil.
func (prev *Runtime) reusablePool(name string, cfg *config.Config) *upstream.Pool {
	if prev == nil || prev.pools[name] == nil || !prev.owned[name] {
		return nil
	}
	if !reflect.DeepEqual(prev.Config.Upstreams[name], cfg.Upstreams[name]) ||
		!slices.Equal(prev.Config.Global.TrustedProxies, cfg.Global.TrustedProxies) {
		return nil
	}
	return prev.pools[name]
}

// adopt takes over from prev the pools rt reuses, so that closing prev
// (after the swap) leaves them running. It returns their names.
func (rt *Runtime) adopt(prev *Runtime) []string {
	var names []string
	for name, p := range rt.pools {
		if !rt.owned[name] && prev != nil && prev.pools[name] == p && prev.owned[name] {
			delete(prev.owned, name)
			rt.owned[name] = true
			names = append(names, name)
		}
	}
	for key := range rt.borrowed {
		delete(prev.limiters, key) // prev's Close must leave it running
		delete(rt.borrowed, key)
	}
	slices.Sort(names)
	return names
}

// stack is the fixed middleware order. It is code, not configuration:
// recover → request id → access log → (rate limit/auth, filter: later work)
// → router lookup → security headers → cache → (compression: later) →
// route header edits → action. The stages after the lookup are per site
// (siteStages): configuration turns them on or off, never reorders them.
func stack(h http.Handler, log *slog.Logger, trusted *upstream.TrustedProxies, obs middleware.Observer) http.Handler {
	clientIP := func(r *http.Request) string {
		if ip := trusted.ClientIP(r); ip.IsValid() {
			return ip.String()
		}
		return ""
	}
	return middleware.Chain(h,
		middleware.Recover(log),
		middleware.RequestID(),
		middleware.AccessLog(log, clientIP, obs),
	)
}

// routeHandler matches the request and runs its route's action.
func (rt *Runtime) routeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route, status := rt.table.Lookup(r)
		if route == nil {
			router.Error(w, status)
			return
		}
		if r.TLS != nil && !rt.servesOverTLS(route.Site, r) {
			router.Error(w, http.StatusMisdirectedRequest)
			return
		}
		info := middleware.InfoFrom(r.Context())
		info.Route, info.Upstream = route.Name, route.Upstream
		if len(route.Site.Hosts) > 0 {
			info.Site = route.Site.Hosts[0]
		}
		if rt.altSvc != "" && r.TLS != nil && r.ProtoMajor < 3 && isOn(route.Site.HTTP3) {
			// Set with the final status: a backend's 1xx clears the header
			// map, and the forwarder strips the backend's own Alt-Svc.
			w = middleware.SetOnFinal(w, "Alt-Svc", rt.altSvc)
		}
		rt.stages[route].ServeHTTP(w, r)
	})
}

// accessStages puts a route's rate limit and auth in front of h (the fixed
// order: rate limit → auth → security headers → cache → ...), so guessing
// passwords is rate-limited too. A limiter whose route and settings did not
// change is taken over from prev, keeping its buckets across a reload.
func (rt *Runtime) accessStages(route *router.Route, h http.Handler, trusted *upstream.TrustedProxies, prev *Runtime) (http.Handler, error) {
	if a := route.Config.Auth; a != nil {
		auth, err := middleware.NewAuth(middleware.AuthOptions{Realm: a.Realm, Basic: a.Basic, Bearer: a.Bearer})
		if err != nil {
			return nil, err
		}
		h = auth(h)
	}
	if rl := route.Config.RateLimit; rl != nil {
		// trusted_proxies is part of the key: the limiter resolves clients
		// with it, so a reload that changes it must not keep the old one.
		key := fmt.Sprintf("%s %+v %v", route.Name, *rl, rt.Config.Global.TrustedProxies)
		var l *middleware.RateLimiter
		if prev != nil {
			l = prev.limiters[key] // borrowed until adopt
		}
		if l != nil {
			rt.borrowed[key] = true
		} else {
			l = middleware.NewRateLimiter(middleware.RateLimitOptions{
				Requests: rl.Requests, Per: rl.Per.D(), Burst: rl.Burst, MaxClients: rl.MaxClients,
				ClientIP: trusted.ClientIP,
			})
		}
		rt.limiters[key] = l
		h = l.Handler(h)
	}
	return h, nil
}

// siteStages builds the per-site part of the stack for one route.
func siteStages(route *router.Route, c *cache.Cache) http.Handler {
	var h http.Handler = route
	if rh := route.Config.Headers; !routeHeaders(rh).Empty() {
		h = routeHeaders(rh).Wrap(h)
	}
	site := route.Site
	if site.Cache && c != nil {
		h = c.Handler(h)
	}
	if p, on := securityPolicy(site); on {
		h = middleware.SecurityHeaders(p)(h)
	}
	return h
}

func routeHeaders(h config.RouteHeaders) middleware.RouteHeaders {
	ops := func(o config.HeaderOps) middleware.HeaderOps {
		return middleware.HeaderOps{Add: o.Add, Set: o.Set, Remove: o.Remove}
	}
	return middleware.RouteHeaders{Request: ops(h.Request), Response: ops(h.Response)}
}

// defaultHSTSMaxAge is the HSTS max-age of sites with publicly trusted
// certificates (tls: auto or on_demand, no local names) that set none.
const defaultHSTSMaxAge = 365 * 24 * time.Hour

// securityPolicy turns a site's headers settings into the security-headers
// stage's policy; false when the site turned the stage off.
func securityPolicy(s *config.Site) (middleware.SecurityPolicy, bool) {
	h := s.Headers
	if h.Security != nil && !*h.Security {
		return middleware.SecurityPolicy{}, false
	}
	p := middleware.DefaultSecurityPolicy()
	switch {
	case h.HSTS != nil:
		p.HSTS = middleware.HSTSValue(h.HSTS.MaxAge.D(), h.HSTS.IncludeSubdomains, h.HSTS.Preload)
	case publiclyTrusted(s):
		p.HSTS = middleware.HSTSValue(defaultHSTSMaxAge, false, false)
	}
	p.CSP, p.PermissionsPolicy = h.CSP, h.PermissionsPolicy
	p.ReferrerPolicy = orOff(h.ReferrerPolicy, p.ReferrerPolicy)
	p.FrameOptions = strings.ToUpper(orOff(h.FrameOptions, p.FrameOptions))
	p.Override, p.KeepServer = h.Override, h.KeepServer
	return p, true
}

// publiclyTrusted reports whether a site's certificates come from a public
// ACME CA: only then is HSTS safe to send by default (HSTS on a name with a
// certificate browsers do not trust locks users out with no way to click
// through).
func publiclyTrusted(s *config.Site) bool {
	if s.TLS.Mode != config.TLSAuto && s.TLS.Mode != config.TLSOnDemand {
		return false
	}
	for _, h := range s.Hosts {
		if h == "*" || gtls.IsInternalName(h) {
			return false
		}
	}
	return true
}

// orOff is v, or def when v is empty, or "" when v is "off".
func orOff(v, def string) string {
	switch {
	case v == "":
		return def
	case strings.EqualFold(v, "off"):
		return ""
	}
	return v
}

// servesOverTLS reports whether site may answer r, a request that arrived
// over TLS (the router already answered 421 when the SNI names another site):
// a tls: off site is never served over TLS; a site with http3: false is not
// served over HTTP/3; and without SNI (clients of an IP address) the site
// must be the one the connection's local address belongs to, since the
// certificate presented was chosen by that address.
func (rt *Runtime) servesOverTLS(site *config.Site, r *http.Request) bool {
	switch {
	case site.TLS.Mode == config.TLSOff:
		return false
	case r.ProtoMajor == 3 && !isOn(site.HTTP3):
		return false
	case r.TLS.ServerName == "":
		addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if !ok {
			return false
		}
		host, _, err := net.SplitHostPort(addr.String())
		if err != nil {
			return false
		}
		return rt.table.Site(host) == site
	}
	return true
}

// plainHTTPHandler serves the HTTP listener: sites with tls: off are routed;
// requests for TLS sites get a 308 to the same host, path and query over
// HTTPS (ACME HTTP-01 requests were answered before the stack).
func (rt *Runtime) plainHTTPHandler() http.Handler {
	route := rt.routeHandler()
	port := rt.Config.Global.HTTPSPort
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		site := rt.table.Site(r.Host)
		if site == nil || site.TLS.Mode == config.TLSOff {
			route.ServeHTTP(w, r)
			return
		}
		target := "https://" + httpsAuthority(r.Host, port) + r.URL.RequestURI()
		w.Header().Set("Location", target)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusPermanentRedirect)
		if r.Method == http.MethodGet {
			_, _ = fmt.Fprintln(w, target)
		}
	})
}

// httpsAuthority is host (without its port) plus ":port" unless port is 443.
func httpsAuthority(host string, port int) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == 443 {
		return host
	}
	return host + ":" + strconv.Itoa(port)
}

// ServeHTTP runs the request through the fixed stack.
func (rt *Runtime) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.handler.ServeHTTP(w, r)
}

// Start starts the pools' health checkers. A server calls it when the
// Runtime goes live; Close stops them.
func (rt *Runtime) Start() {
	for name, p := range rt.pools {
		if rt.owned[name] {
			p.Start()
		}
	}
}

// Close stops the health checkers and releases the pools' idle connections.
// In-flight requests keep working; it is called when the Runtime is
// replaced or the server stops.
func (rt *Runtime) Close() {
	for name, p := range rt.pools {
		if rt.owned[name] {
			p.Close()
		}
	}
	for key, l := range rt.limiters {
		if !rt.borrowed[key] {
			l.Close() // still answers in-flight requests after Close
		}
	}
}

// isOn reads an optional switch whose default is on.
func isOn(b *bool) bool { return b == nil || *b }
