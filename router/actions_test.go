package router

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestStripPrefix(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t, siteOf([]string{"example.com"},
		proxied("/api/", "slash", true),
		proxied("/v2", "noslash", true),
		proxied("/keep/", "keep", false),
		proxied("/", "root", true),
	))
	tests := []struct {
		name, target string
		pool         string
		want         seen
	}{
		{"slash prefix", "/api/users", "slash",
			seen{Path: "/users", EscapedPath: "/users", RequestURI: "/users"}},
		{"slash prefix itself", "/api/", "slash",
			seen{Path: "/", EscapedPath: "/", RequestURI: "/"}},
		{"slash prefix without slash", "/api", "slash",
			seen{Path: "/", EscapedPath: "/", RequestURI: "/"}},
		{"no-slash prefix", "/v2/users", "noslash",
			seen{Path: "/users", EscapedPath: "/users", RequestURI: "/users"}},
		{"no-slash prefix itself", "/v2", "noslash",
			seen{Path: "/", EscapedPath: "/", RequestURI: "/"}},
		{"trailing slash kept", "/v2/users/", "noslash",
			seen{Path: "/users/", EscapedPath: "/users/", RequestURI: "/users/"}},
		{"query kept", "/api/users?b=2&a=1&x=%2F", "slash",
			seen{Path: "/users", EscapedPath: "/users", RawQuery: "b=2&a=1&x=%2F", RequestURI: "/users?b=2&a=1&x=%2F"}},
		{"prefix itself with query", "/api?q=1", "slash",
			seen{Path: "/", EscapedPath: "/", RawQuery: "q=1", RequestURI: "/?q=1"}},
		{"escaped slash", "/api/a%2Fb", "slash",
			seen{Path: "/a/b", RawPath: "/a%2Fb", EscapedPath: "/a%2Fb", RequestURI: "/a%2Fb"}},
		{"escaped slash query", "/api/a%2Fb?x=1", "slash",
			seen{Path: "/a/b", RawPath: "/a%2Fb", EscapedPath: "/a%2Fb", RawQuery: "x=1", RequestURI: "/a%2Fb?x=1"}},
		{"escaped prefix", "/%61pi/a%2Fb", "slash",
			seen{Path: "/a/b", EscapedPath: "/a/b", RequestURI: "/a/b"}},
		{"unclean path stripped after cleaning", "/api//x/../users", "slash",
			seen{Path: "/users", EscapedPath: "/users", RequestURI: "/users"}},
		{"no strip keeps escaped path", "/keep/a%2Fb/../c?q", "keep",
			seen{Path: "/keep/a/b/../c", RawPath: "/keep/a%2Fb/../c", EscapedPath: "/keep/a%2Fb/../c", RawQuery: "q", RequestURI: "/keep/a%2Fb/../c?q"}},
		{"root strip is a no-op", "/other/a%2Fb", "root",
			seen{Path: "/other/a/b", RawPath: "/other/a%2Fb", EscapedPath: "/other/a%2Fb", RequestURI: "/other/a%2Fb"}},
		{"apix is not api", "/apix", "root",
			seen{Path: "/apix", EscapedPath: "/apix", RequestURI: "/apix"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.Host = "example.com"
			origURL, origURI := *r.URL, r.RequestURI
			w := httptest.NewRecorder()
			tbl.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				t.Fatalf("status %d", w.Code)
			}
			if pool := w.Header().Get("X-Pool"); pool != tt.pool {
				t.Errorf("pool = %q, want %q", pool, tt.pool)
			}
			if got := seenFrom(w.Header()); got != tt.want {
				t.Errorf("backend saw %+v\nwant         %+v", got, tt.want)
			}
			if *r.URL != origURL || r.RequestURI != origURI {
				t.Errorf("original request modified: %+v %q", *r.URL, r.RequestURI)
			}
		})
	}
}

func TestRespond(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		respond    config.Respond
		method     string
		wantStatus int
		wantHeader map[string]string
		wantBody   string
	}{
		{"body", config.Respond{Status: 200, Body: "hello\n"}, "GET", 200,
			map[string]string{"Content-Type": "text/plain; charset=utf-8", "Content-Length": "6"}, "hello\n"},
		{"head has no body", config.Respond{Status: 200, Body: "hello\n"}, "HEAD", 200,
			map[string]string{"Content-Type": "text/plain; charset=utf-8", "Content-Length": "6"}, ""},
		{"headers and status", config.Respond{Status: 418, Body: "{}", Headers: map[string]string{
			"content-type": "application/json", "x-a": "1", "Content-Length": "99"}}, "POST", 418,
			map[string]string{"Content-Type": "application/json", "X-A": "1", "Content-Length": "2"}, "{}"},
		{"empty body", config.Respond{Status: 503}, "GET", 503,
			map[string]string{"Content-Type": "", "Content-Length": "0"}, ""},
		{"no content", config.Respond{Status: 204, Headers: map[string]string{"X-B": "2"}}, "GET", 204,
			map[string]string{"Content-Length": "", "X-B": "2"}, ""},
		{"default status", config.Respond{Body: "x"}, "GET", 200,
			map[string]string{"Content-Length": "1"}, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tbl := mustNew(t, siteOf([]string{"example.com"}, &config.Route{Path: "/", Respond: &tt.respond}))
			r := httptest.NewRequest(tt.method, "/x", nil)
			r.Host = "example.com"
			w := httptest.NewRecorder()
			tbl.ServeHTTP(w, r)
			if w.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", w.Code, tt.wantStatus)
			}
			for k, v := range tt.wantHeader {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if w.Body.String() != tt.wantBody {
				t.Errorf("body = %q, want %q", w.Body.String(), tt.wantBody)
			}
		})
	}
}

func TestRedirect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, to   string
		status     int
		method     string
		wantStatus int
		wantBody   string
		wantLen    string
	}{
		{"absolute GET", "https://example.com/new", 308, "GET", 308, "https://example.com/new\n", "24"},
		{"default status", "https://example.com/new", 0, "GET", 308, "https://example.com/new\n", "24"},
		{"relative kept as is", "../new?x=1", 302, "GET", 302, "../new?x=1\n", "11"},
		{"HEAD has no body", "/new", 301, "HEAD", 301, "", "5"},
		{"POST has no body", "/new", 307, "POST", 307, "", "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tbl := mustNew(t, siteOf([]string{"example.com"},
				&config.Route{Path: "/old", Redirect: &config.Redirect{To: tt.to, Status: tt.status}}))
			r := httptest.NewRequest(tt.method, "/old/page?q=1", nil)
			r.Host = "example.com"
			w := httptest.NewRecorder()
			tbl.ServeHTTP(w, r)
			if w.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", w.Code, tt.wantStatus)
			}
			if loc := w.Header().Get("Location"); loc != tt.to {
				t.Errorf("Location = %q, want %q", loc, tt.to)
			}
			if w.Body.String() != tt.wantBody {
				t.Errorf("body = %q, want %q", w.Body.String(), tt.wantBody)
			}
			if n := w.Header().Get("Content-Length"); n != tt.wantLen {
				t.Errorf("Content-Length = %q, want %q", n, tt.wantLen)
			}
		})
	}
}

func TestError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		body   string
	}{
		{404, "404 Not Found\n"},
		{400, "400 Bad Request\n"},
		{421, "421 Misdirected Request\n"},
		{599, "599\n"},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			t.Parallel()
			w := httptest.NewRecorder()
			w.Header().Set("Content-Length", "1000")
			Error(w, tt.status)
			if w.Code != tt.status || w.Body.String() != tt.body {
				t.Errorf("got %d %q", w.Code, w.Body.String())
			}
			h := w.Header()
			if h.Get("Content-Type") != "text/plain; charset=utf-8" || h.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("headers %v", h)
			}
			if n := h.Get("Content-Length"); n != strconv.Itoa(len(tt.body)) {
				t.Errorf("Content-Length = %q", n)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	failProxy := func(*config.Site, *config.Route) (http.Handler, error) { return nil, errors.New("boom") }
	nilProxy := func(*config.Site, *config.Route) (http.Handler, error) { return nil, nil }
	tests := []struct {
		name  string
		cfg   *config.Config
		proxy ProxyFunc
		want  []string // substrings of the error
		is    error
	}{
		{"nil config", nil, echoProxy, []string{"nil config"}, nil},
		{"static", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"},
			&config.Route{Path: "/s/", Static: &config.Static{Root: "."}})}}, echoProxy,
			[]string{`site "a.com": route "/s/": static`}, ErrUnsupportedAction},
		{"no action", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, &config.Route{Path: "/"})}},
			echoProxy, []string{"exactly one action"}, nil},
		{"two actions", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, &config.Route{Path: "/",
			Respond: &config.Respond{Status: 200}, Redirect: &config.Redirect{To: "/x", Status: 308}})}},
			echoProxy, []string{"have 2"}, nil},
		{"duplicate host", &config.Config{Sites: []*config.Site{
			siteOf([]string{"a.com"}, say("/", "1")), siteOf([]string{"A.com"}, say("/", "2"))}},
			echoProxy, []string{`host "A.com" is already used by site "a.com"`}, nil},
		{"two fallbacks", &config.Config{Sites: []*config.Site{
			siteOf([]string{"*"}, say("/", "1")), siteOf([]string{"*"}, say("/", "2"))}},
			echoProxy, []string{"already used"}, nil},
		{"bad wildcard", &config.Config{Sites: []*config.Site{siteOf([]string{"a.*.com", "*.", "*.*.a.com", "", "a.com/x"}, say("/", "1"))}},
			echoProxy, []string{`bad host "a.*.com"`, `bad host "*."`, `bad host "*.*.a.com"`, `bad host ""`, `bad host "a.com/x"`}, nil},
		{"no hosts", &config.Config{Sites: []*config.Site{siteOf(nil, say("/", "1"))}},
			echoProxy, []string{"site #1: no hosts"}, nil},
		{"proxy error", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, proxied("/", "p", false))}},
			failProxy, []string{"boom"}, nil},
		{"proxy nil handler", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, proxied("/", "p", false))}},
			nilProxy, []string{"no handler"}, nil},
		{"no proxy builder", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, proxied("/", "p", false))}},
			nil, []string{"no proxy builder"}, nil},
		{"bad paths", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"}, say("x", "1"), say("/../x", "2"))}},
			echoProxy, []string{`route "x": path must start`, `route "/../x": path climbs`}, nil},
		{"bad respond", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"},
			&config.Route{Path: "/", Respond: &config.Respond{Status: 99}},
			&config.Route{Path: "/b", Respond: &config.Respond{Status: 204, Body: "x"}},
			&config.Route{Path: "/c", Respond: &config.Respond{Status: 200, Headers: map[string]string{"a b": "1"}}})}},
			echoProxy, []string{"status 99", "cannot have a body", `bad header "a b"`}, nil},
		{"bad redirect", &config.Config{Sites: []*config.Site{siteOf([]string{"a.com"},
			&config.Route{Path: "/", Redirect: &config.Redirect{To: "/x", Status: 200}},
			&config.Route{Path: "/b", Redirect: &config.Redirect{Status: 308}},
			&config.Route{Path: "/c", Redirect: &config.Redirect{To: "/x\r\nSet-Cookie: a=b", Status: 308}})}},
			echoProxy, []string{"status 200", "empty target", "control character"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tbl, err := New(tt.cfg, tt.proxy)
			if err == nil || tbl != nil {
				t.Fatalf("New = %v, %v; want an error", tbl, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

// TestStripPrefixUnmatched: a Route served a request Lookup did not match to
// it passes the request through untouched.
func TestStripPrefixUnmatched(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t, siteOf([]string{"example.com"}, proxied("/api/", "api", true)))
	rt := tbl.Match("example.com", "/api/x")
	for _, target := range []string{"/other/a%2Fb", "/../x"} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, target, nil)
			w := httptest.NewRecorder()
			rt.ServeHTTP(w, r)
			if got := seenFrom(w.Header()); got.EscapedPath != r.URL.EscapedPath() || got.RequestURI != r.RequestURI {
				t.Errorf("backend saw %+v for %q", got, target)
			}
		})
	}
}
