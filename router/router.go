// Package router owns Gatehouse's request routing: it compiles the sites of a
// validated configuration into an immutable Table that maps a request's host
// and path to a Route, and it builds the routes' built-in actions (respond and
// redirect) and the strip_prefix rewrite. Proxied routes get their handler
// from the caller (see ProxyFunc); the router never talks to backends.
//
// Hosts match exactly (case-insensitive, port and trailing dot ignored), then
// by a one-label wildcard ("*.example.com"), then the site whose hosts
// contain "*". Within a site the longest path prefix, compared on segment
// boundaries, wins; ties go to the route listed first.
//
// A Table is built once by New and never modified afterwards: it is safe for
// concurrent use, and a configuration reload builds a new one. Match does not
// allocate; Lookup does not allocate for an already clean path.
package router

import (
	"cmp"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"slices"
	"strings"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// ErrUnsupportedAction is wrapped by New's error when a route uses an action
// the router cannot build (for now: static).
var ErrUnsupportedAction = errors.New("unsupported route action")

// ProxyFunc builds the handler for a route whose action is `upstream`.
type ProxyFunc func(site *config.Site, route *config.Route) (http.Handler, error)

// Table is a compiled, immutable host and path table. It is safe for
// concurrent use.
type Table struct {
	exact    map[string]*site // lower-cased host → site
	wildcard map[string]*site // "example.com" for "*.example.com" → site
	fallback *site            // the site whose hosts contain "*", or nil
	sites    []*site          // in configuration order
}

// site is one compiled config.Site.
type site struct {
	cfg    *config.Site
	routes []*Route // by len(base) descending; ties keep configuration order

	// bySegment holds the routes other than "/" grouped by the first segment
	// of their prefix ("api" for "/api/v1"), each group ordered as routes;
	// only those can match a path with that first segment.
	bySegment map[string][]*Route
	root      *Route // the first "/" route, or nil
}

// Route is one compiled config.Route. It is an http.Handler (see ServeHTTP).
type Route struct {
	Site     *config.Site
	Config   *config.Route
	Name     string // for logs: first host of the site + route path, e.g. "example.com/api/"
	Upstream string // pool name for proxied routes, else ""

	prefix  string // the configured path, cleaned; always starts with "/"
	base    string // prefix without its trailing "/" ("" for "/")
	strip   bool
	handler http.Handler
}

// Prefix returns the route's path prefix as configured (cleaned).
func (rt *Route) Prefix() string { return rt.prefix }

// New compiles cfg.Sites into an immutable Table. Respond and redirect
// handlers are built here; proxied routes get their handler from proxy.
// Routes with other actions (static) are an error. Every problem found is
// reported, joined into one error.
func New(cfg *config.Config, proxy ProxyFunc) (*Table, error) {
	if cfg == nil {
		return nil, errors.New("router: nil config")
	}
	t := &Table{
		exact:    make(map[string]*site),
		wildcard: make(map[string]*site),
	}
	owner := make(map[string]string) // normalised host → name of the site that claimed it
	var errs []error
	for i, cs := range cfg.Sites {
		if cs == nil {
			errs = append(errs, fmt.Errorf("site #%d: missing", i+1))
			continue
		}
		name := siteName(cs, i)
		s, err := compileSite(cs, name, proxy)
		if err != nil {
			errs = append(errs, err)
		}
		if len(cs.Hosts) == 0 {
			errs = append(errs, fmt.Errorf("site %s: no hosts", name))
		}
		for _, h := range cs.Hosts {
			key, kind, ok := hostKey(h)
			if !ok {
				errs = append(errs, fmt.Errorf("site %s: bad host %q", name, h))
				continue
			}
			if prev, dup := owner[key]; dup {
				errs = append(errs, fmt.Errorf("site %s: host %q is already used by site %s", name, h, prev))
				continue
			}
			owner[key] = name
			switch kind {
			case hostExact:
				t.exact[key] = s
			case hostWildcard:
				t.wildcard[strings.TrimPrefix(key, "*.")] = s
			default:
				t.fallback = s
			}
		}
		t.sites = append(t.sites, s)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

// Kinds of configured host.
const (
	hostExact    = iota // "example.com"
	hostWildcard        // "*.example.com": one extra label
	hostAny             // "*"
)

// hostKey normalises a configured host and says which kind it is.
func hostKey(h string) (key string, kind int, ok bool) {
	switch {
	case h == "*":
		return h, hostAny, true
	case strings.HasPrefix(h, "*."):
		suffix := normHost(h[2:])
		if suffix == "" || suffix == "." || strings.ContainsAny(suffix, "*:[]") || suffix[0] == '.' {
			return "", 0, false
		}
		return "*." + suffix, hostWildcard, true
	}
	key = normHost(h)
	if key == "" || key == "." || strings.ContainsAny(key, "*[]/ ") {
		return "", 0, false
	}
	return key, hostExact, true
}

func siteName(cs *config.Site, i int) string {
	if len(cs.Hosts) > 0 {
		return fmt.Sprintf("%q", cs.Hosts[0])
	}
	return fmt.Sprintf("#%d", i+1)
}

func compileSite(cs *config.Site, name string, proxy ProxyFunc) (*site, error) {
	s := &site{cfg: cs}
	first := ""
	if len(cs.Hosts) > 0 {
		first = normHost(cs.Hosts[0])
	}
	var errs []error
	for _, cr := range cs.Routes {
		if cr == nil {
			errs = append(errs, fmt.Errorf("site %s: missing route", name))
			continue
		}
		rt, err := compileRoute(cs, cr, first, proxy)
		if err != nil {
			errs = append(errs, fmt.Errorf("site %s: route %q: %w", name, cr.Path, err))
			continue
		}
		s.routes = append(s.routes, rt)
	}
	slices.SortStableFunc(s.routes, func(a, b *Route) int {
		return cmp.Compare(len(b.base), len(a.base))
	})
	s.bySegment = make(map[string][]*Route)
	for _, rt := range s.routes {
		if rt.base == "" {
			if s.root == nil {
				s.root = rt
			}
			continue
		}
		seg := firstSegment(rt.base)
		s.bySegment[seg] = append(s.bySegment[seg], rt)
	}
	return s, errors.Join(errs...)
}

func compileRoute(cs *config.Site, cr *config.Route, host string, proxy ProxyFunc) (*Route, error) {
	p := cr.Path
	if p == "" {
		p = "/"
	}
	if p[0] != '/' || strings.IndexByte(p, 0) >= 0 {
		return nil, errors.New("path must start with \"/\"")
	}
	p, ok := cleanPath(p)
	if !ok {
		return nil, errors.New("path climbs above \"/\"")
	}
	rt := &Route{
		Site:   cs,
		Config: cr,
		Name:   host + p,
		prefix: p,
		base:   strings.TrimSuffix(p, "/"),
		strip:  cr.StripPrefix,
	}
	actions := 0
	for _, set := range []bool{cr.Upstream != nil, cr.Respond != nil, cr.Redirect != nil, cr.Static != nil} {
		if set {
			actions++
		}
	}
	if actions != 1 {
		return nil, fmt.Errorf("want exactly one action (upstream, respond, redirect or static), have %d", actions)
	}
	var err error
	switch {
	case cr.Upstream != nil:
		rt.Upstream = cr.Upstream.Name
		if cr.Upstream.Pool != nil && cr.Upstream.Pool.Name != "" {
			rt.Upstream = cr.Upstream.Pool.Name
		}
		if proxy == nil {
			return nil, errors.New("proxied route but no proxy builder")
		}
		rt.handler, err = proxy(cs, cr)
		if err == nil && rt.handler == nil {
			err = errors.New("proxy builder returned no handler")
		}
	case cr.Respond != nil:
		rt.handler, err = newRespond(cr.Respond)
	case cr.Redirect != nil:
		rt.handler, err = newRedirect(cr.Redirect)
	default:
		err = fmt.Errorf("static: %w", ErrUnsupportedAction)
	}
	if err != nil {
		return nil, err
	}
	return rt, nil
}

// Routes yields every compiled route, site by site in configuration order.
func (t *Table) Routes() iter.Seq[*Route] {
	return func(yield func(*Route) bool) {
		for _, s := range t.sites {
			for _, rt := range s.routes {
				if !yield(rt) {
					return
				}
			}
		}
	}
}

// Match finds the route for a host (may contain a port; case-insensitive)
// and an already cleaned, decoded path. It allocates nothing. It returns nil
// when no site or no route matches.
func (t *Table) Match(host, path string) *Route {
	s := t.siteFor(host)
	if s == nil {
		return nil
	}
	return s.match(path)
}

// Site returns the configured site serving host (which may contain a port),
// or nil. It allocates nothing.
func (t *Table) Site(host string) *config.Site {
	if s := t.siteFor(host); s != nil {
		return s.cfg
	}
	return nil
}

// Lookup validates and cleans r's path and finds its route. It returns
// (route, 0) on success, or (nil, status) with 421 (TLS request whose SNI
// belongs to a different site than the Host header; an empty SNI is not
// checked), 400 (bad path) or 404 (no site or no route), checked in that
// order. Lookup does not modify r, and does not allocate when r's path is
// already clean.
func (t *Table) Lookup(r *http.Request) (*Route, int) {
	s := t.siteFor(r.Host)
	if r.TLS != nil && r.TLS.ServerName != "" && t.siteFor(r.TLS.ServerName) != s {
		return nil, http.StatusMisdirectedRequest
	}
	p, ok := requestPath(r)
	if !ok {
		return nil, http.StatusBadRequest
	}
	if s == nil {
		return nil, http.StatusNotFound
	}
	rt := s.match(p)
	if rt == nil {
		return nil, http.StatusNotFound
	}
	return rt, 0
}

// ServeHTTP runs Lookup and then either replies with its error status or
// serves the route.
func (t *Table) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, status := t.Lookup(r)
	if rt == nil {
		Error(w, status)
		return
	}
	rt.ServeHTTP(w, r)
}

// ServeHTTP runs the route's action for a request that Lookup matched: it
// applies strip_prefix (on a shallow copy of r) and calls the handler.
func (rt *Route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rt.strip && rt.base != "" {
		r = rt.stripPrefix(r)
	}
	rt.handler.ServeHTTP(w, r)
}

// match returns the first route (longest prefix) whose prefix matches path on
// a segment boundary, or nil.
func (s *site) match(path string) *Route {
	for _, rt := range s.bySegment[firstSegment(path)] {
		if hasSegmentPrefix(path, rt.base) {
			return rt
		}
	}
	if s.root != nil && (path == "" || path[0] == '/') {
		return s.root
	}
	return nil
}

// firstSegment returns "a" for "/a/b", "/a/" and "/a", and "" for "/" and "".
func firstSegment(p string) string {
	if p == "" {
		return ""
	}
	p = p[1:]
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return p
}
