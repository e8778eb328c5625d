package router

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func lookupTable(t *testing.T) *Table {
	return mustNew(t,
		siteOf([]string{"example.com"},
			say("/", "root"),
			say("/a/b/c", "abc"),
			say("/etc", "etc"),
		),
		siteOf([]string{"other.com", "*.other.com"}, say("/", "other")),
		siteOf([]string{"api.example.com"}, say("/v1/", "v1")),
	)
}

func TestLookup(t *testing.T) {
	t.Parallel()
	tbl := lookupTable(t)
	tests := []struct {
		name, method, target, host, sni string
		wantStatus                      int
		want                            string
	}{
		{name: "root", target: "/", host: "example.com", want: "root"},
		{name: "clean", target: "/a/b/c/d", host: "example.com", want: "abc"},
		{name: "double slash and dot", target: "/a//b/./c", host: "example.com", want: "abc"},
		{name: "dot dot inside", target: "/a/x/../b/c", host: "example.com", want: "abc"},
		{name: "encoded dot dot", target: "/a/x/%2e%2e/b/c", host: "example.com", want: "abc"},
		{name: "encoded slash decodes", target: "/a%2Fb%2Fc", host: "example.com", want: "abc"},
		{name: "escape to root", target: "/../etc", host: "example.com", wantStatus: 400},
		{name: "escape from inside", target: "/a/../../b", host: "example.com", wantStatus: 400},
		{name: "encoded escape", target: "/%2e%2e/etc", host: "example.com", wantStatus: 400},
		{name: "NUL", target: "/a%00b", host: "example.com", wantStatus: 400},
		{name: "options star", method: "OPTIONS", target: "*", host: "example.com", want: "root"},
		{name: "no site", target: "/", host: "nowhere.org", wantStatus: 404},
		{name: "no route", target: "/v2/x", host: "api.example.com", wantStatus: 404},
		{name: "route", target: "/v1", host: "API.example.com:443", want: "v1"},
		{name: "sni matches", target: "/", host: "example.com", sni: "example.com", want: "root"},
		{name: "sni matches case and port", target: "/", host: "Example.com:8443", sni: "EXAMPLE.COM", want: "root"},
		{name: "sni same site other host", target: "/", host: "x.other.com", sni: "other.com", want: "other"},
		{name: "sni other site", target: "/", host: "example.com", sni: "other.com", wantStatus: 421},
		{name: "sni unknown", target: "/", host: "example.com", sni: "unknown.org", wantStatus: 421},
		{name: "sni known host unknown", target: "/", host: "unknown.org", sni: "example.com", wantStatus: 421},
		{name: "sni before path", target: "/../x", host: "example.com", sni: "other.com", wantStatus: 421},
		{name: "empty sni not checked", target: "/", host: "other.com", sni: "", want: "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			r := httptest.NewRequest(method, tt.target, nil)
			r.Host = tt.host
			if tt.sni != "" {
				r.TLS = &tls.ConnectionState{ServerName: tt.sni}
			}
			before := *r.URL
			rt, status := tbl.Lookup(r)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d", status, tt.wantStatus)
			}
			if tt.wantStatus == 0 && tag(rt) != tt.want {
				t.Errorf("route = %s, want %s", tag(rt), tt.want)
			}
			if tt.wantStatus != 0 && rt != nil {
				t.Errorf("route = %s, want nil", tag(rt))
			}
			if *r.URL != before {
				t.Errorf("Lookup modified r.URL: %+v, was %+v", *r.URL, before)
			}
		})
	}
}

// An absolute-form target with no path ("GET http://example.com HTTP/1.1")
// is routed as "/".
func TestLookupEmptyPathIsRoot(t *testing.T) {
	t.Parallel()
	tbl := lookupTable(t)
	r := &http.Request{Method: http.MethodGet, Host: "example.com", URL: &url.URL{Scheme: "http", Host: "example.com"}, Header: http.Header{}}
	if rt, status := tbl.Lookup(r); rt == nil || status != 0 || rt.Config.Path != "/" {
		t.Fatalf("Lookup = %s, %d; want the / route", tag(rt), status)
	}
}

func TestLookupBadRequests(t *testing.T) {
	t.Parallel()
	tbl := lookupTable(t)
	tests := []struct {
		name, method string
		url          *url.URL
	}{
		{"nil URL", http.MethodGet, nil},
		{"relative path", http.MethodGet, &url.URL{Path: "a/b"}},
		{"star without OPTIONS", http.MethodGet, &url.URL{Path: "*"}},
		{"CONNECT authority form", http.MethodConnect, &url.URL{Host: "example.com:443"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := &http.Request{Method: tt.method, Host: "example.com", URL: tt.url, Header: http.Header{}}
			if rt, status := tbl.Lookup(r); rt != nil || status != http.StatusBadRequest {
				t.Errorf("Lookup = %s, %d; want nil, 400", tag(rt), status)
			}
		})
	}
}

func TestTableServeHTTPErrors(t *testing.T) {
	t.Parallel()
	tbl := lookupTable(t)
	tests := []struct {
		name, target, host, sni string
		status                  int
	}{
		{"not found", "/", "nowhere.org", "", 404},
		{"bad path", "/../x", "example.com", "", 400},
		{"misdirected", "/", "example.com", "other.com", 421},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.Host = tt.host
			if tt.sni != "" {
				r.TLS = &tls.ConnectionState{ServerName: tt.sni}
			}
			w := httptest.NewRecorder()
			tbl.ServeHTTP(w, r)
			wantBody := http.StatusText(tt.status)
			if w.Code != tt.status || w.Body.String() != strconv.Itoa(tt.status)+" "+wantBody+"\n" {
				t.Errorf("got %d %q", w.Code, w.Body.String())
			}
			if ct := w.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", ct)
			}
			if n := w.Header().Get("X-Content-Type-Options"); n != "nosniff" {
				t.Errorf("X-Content-Type-Options = %q", n)
			}
		})
	}
}

// TestConcurrentUse exercises one Table from many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	tbl := lookupTable(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				r := httptest.NewRequest(http.MethodGet, "/a//b/c", nil)
				r.Host = []string{"example.com", "EXAMPLE.com", "x.other.com"}[(i+j)%3]
				w := httptest.NewRecorder()
				tbl.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					t.Errorf("status %d", w.Code)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestRoutesYieldsEveryRoute(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Sites: []*config.Site{
		{Hosts: []string{"a.example"}, Routes: []*config.Route{
			{Path: "/", Respond: &config.Respond{Status: 200}},
			{Path: "/x/", Respond: &config.Respond{Status: 200}},
		}},
		{Hosts: []string{"b.example"}, Routes: []*config.Route{{Path: "/", Respond: &config.Respond{Status: 204}}}},
	}}
	tbl, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rt := range tbl.Routes() {
		names = append(names, rt.Name)
	}
	slices.Sort(names)
	if want := []string{"a.example/", "a.example/x/", "b.example/"}; !slices.Equal(names, want) {
		t.Errorf("Routes = %q, want %q", names, want)
	}
	n := 0
	for range tbl.Routes() {
		n++
		break
	}
	if n != 1 {
		t.Error("early break not honoured")
	}
}
