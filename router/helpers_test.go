package router

import (
	"net/http"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// say is a respond route whose body tags it, so tests can tell routes apart.
func say(path, body string) *config.Route {
	return &config.Route{Path: path, Respond: &config.Respond{Status: 200, Body: body}}
}

// proxied is a route with an upstream action for pool.
func proxied(path, pool string, strip bool) *config.Route {
	return &config.Route{
		Path:        path,
		StripPrefix: strip,
		Upstream:    &config.UpstreamRef{Name: pool, Pool: &config.Upstream{Name: pool}},
	}
}

func siteOf(hosts []string, routes ...*config.Route) *config.Site {
	return &config.Site{Hosts: hosts, Routes: routes}
}

// seen records what a proxied route's handler received.
type seen struct {
	Path, RawPath, EscapedPath, RawQuery, RequestURI string
}

// echoProxy is a ProxyFunc whose handlers report the request they got in the
// X-Seen-* response headers.
func echoProxy(site *config.Site, route *config.Route) (http.Handler, error) {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Pool", route.Upstream.Pool.Name)
		h.Set("X-Seen-Path", r.URL.Path)
		h.Set("X-Seen-RawPath", r.URL.RawPath)
		h.Set("X-Seen-EscapedPath", r.URL.EscapedPath())
		h.Set("X-Seen-RawQuery", r.URL.RawQuery)
		h.Set("X-Seen-RequestURI", r.RequestURI)
		w.WriteHeader(http.StatusOK)
	}), nil
}

func seenFrom(h http.Header) seen {
	return seen{
		Path:        h.Get("X-Seen-Path"),
		RawPath:     h.Get("X-Seen-RawPath"),
		EscapedPath: h.Get("X-Seen-EscapedPath"),
		RawQuery:    h.Get("X-Seen-RawQuery"),
		RequestURI:  h.Get("X-Seen-RequestURI"),
	}
}

func mustNew(tb testing.TB, sites ...*config.Site) *Table {
	tb.Helper()
	tbl, err := New(&config.Config{Sites: sites}, echoProxy)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return tbl
}

// tag names the route that matched: its respond body, its pool, or "<nil>".
func tag(rt *Route) string {
	switch {
	case rt == nil:
		return "<nil>"
	case rt.Config.Respond != nil:
		return rt.Config.Respond.Body
	case rt.Upstream != "":
		return "pool:" + rt.Upstream
	}
	return "?"
}
