package middleware

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

type countingHandler struct{ n int }

func (c *countingHandler) ServeHTTP(http.ResponseWriter, *http.Request) { c.n++ }

func TestRouteHeadersEmpty(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		h    RouteHeaders
		want bool
	}{
		{"zero", RouteHeaders{}, true},
		{"empty maps", RouteHeaders{Request: HeaderOps{Add: map[string]string{}, Set: map[string]string{}, Remove: []string{}}}, true},
		{"request add", RouteHeaders{Request: HeaderOps{Add: map[string]string{"X-A": "1"}}}, false},
		{"request remove", RouteHeaders{Request: HeaderOps{Remove: []string{"Cookie"}}}, false},
		{"response set", RouteHeaders{Response: HeaderOps{Set: map[string]string{"X-A": "1"}}}, false},
	}
	for _, tc := range tests {
		if got := tc.h.Empty(); got != tc.want {
			t.Errorf("%s: Empty() = %v, want %v", tc.name, got, tc.want)
		}
		next := &countingHandler{}
		if wrapped := tc.h.Wrap(next); (wrapped == http.Handler(next)) != tc.want {
			t.Errorf("%s: Wrap returned next itself: %v, want %v", tc.name, wrapped == http.Handler(next), tc.want)
		}
	}
}

// TestRouteHeadersRequest sends requests through Wrap and a reverse proxy to
// a backend that reports the headers it received.
func TestRouteHeadersRequest(t *testing.T) {
	t.Parallel()
	backend := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(r.Header)
	}), false, false)
	tests := []struct {
		name string
		in   http.Header
		ops  HeaderOps
		want map[string][]string // nil value: absent
	}{
		{"remove, then set, then add on one name",
			http.Header{"X-A": {"client1", "client2"}},
			HeaderOps{Remove: []string{"X-A"}, Set: map[string]string{"X-A": "set"}, Add: map[string]string{"X-A": "added"}},
			map[string][]string{"X-A": {"set", "added"}}},
		{"remove only",
			http.Header{"Cookie": {"a=1"}, "X-Debug": {"1"}, "X-Keep": {"k"}},
			HeaderOps{Remove: []string{"Cookie", "X-Debug"}},
			map[string][]string{"Cookie": nil, "X-Debug": nil, "X-Keep": {"k"}}},
		{"set replaces every value",
			http.Header{"X-Tenant": {"evil", "evil2"}},
			HeaderOps{Set: map[string]string{"X-Tenant": "acme", "X-New": "n"}},
			map[string][]string{"X-Tenant": {"acme"}, "X-New": {"n"}}},
		{"add appends to the client's values",
			http.Header{"X-List": {"c"}},
			HeaderOps{Add: map[string]string{"X-List": "gw", "X-Fresh": "f"}},
			map[string][]string{"X-List": {"c", "gw"}, "X-Fresh": {"f"}}},
		{"names are canonicalized",
			http.Header{"X-Lower": {"c"}},
			HeaderOps{Remove: []string{"x-lower"}, Set: map[string]string{"x-set-me": "s"}},
			map[string][]string{"X-Lower": nil, "X-Set-Me": {"s"}}},
		{"pattern names are literal",
			http.Header{"X-Debug-One": {"1"}},
			HeaderOps{Remove: []string{"X-Debug-*"}},
			map[string][]string{"X-Debug-One": {"1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			before := HeaderOps{Add: maps.Clone(tc.ops.Add), Set: maps.Clone(tc.ops.Set), Remove: slices.Clone(tc.ops.Remove)}
			front := startServer(t, RouteHeaders{Request: tc.ops}.Wrap(reverseProxy(t, backend.URL)), false, false)
			req, _ := http.NewRequest(http.MethodGet, front.URL, nil)
			for k, v := range tc.in {
				req.Header[k] = v
			}
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var seen http.Header
			if err := json.NewDecoder(res.Body).Decode(&seen); err != nil {
				t.Fatal(err)
			}
			for name, want := range tc.want {
				if got := seen[name]; !slices.Equal(got, want) {
					t.Errorf("backend saw %s = %q, want %q", name, got, want)
				}
			}
			if !maps.Equal(before.Add, tc.ops.Add) || !maps.Equal(before.Set, tc.ops.Set) || !slices.Equal(before.Remove, tc.ops.Remove) {
				t.Errorf("ops changed: %+v, were %+v", tc.ops, before)
			}
		})
	}
}

// TestRouteHeadersResponse applies response operations to a real backend's
// response through a reverse proxy, with and without a 103 first.
func TestRouteHeadersResponse(t *testing.T) {
	t.Parallel()
	ops := HeaderOps{
		Remove: []string{"X-A", "X-Internal"},
		Set:    map[string]string{"X-A": "set", "X-Replace": "new", "Cache-Control": "no-store"},
		Add:    map[string]string{"X-A": "added", "X-List": "gw"},
	}
	want := map[string][]string{
		"X-A":           {"set", "added"},
		"X-Internal":    nil,
		"X-Replace":     {"new"},
		"Cache-Control": {"no-store"},
		"X-List":        {"b", "gw"},
		"X-Untouched":   {"u"},
	}
	for _, earlyHints := range []bool{false, true} {
		t.Run(map[bool]string{false: "200", true: "103 then 200"}[earlyHints], func(t *testing.T) {
			t.Parallel()
			backend := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				if earlyHints {
					h.Set("Link", "</a.js>; rel=preload; as=script")
					h.Set("X-Internal", "hint")
					w.WriteHeader(http.StatusEarlyHints)
					clear(h)
				}
				h["X-A"] = []string{"b1", "b2"}
				h.Set("X-Internal", "secret")
				h["X-Replace"] = []string{"old1", "old2"}
				h.Set("X-List", "b")
				h.Set("X-Untouched", "u")
				_, _ = io.WriteString(w, "ok")
			}), false, false)
			front := startServer(t, RouteHeaders{Response: ops}.Wrap(reverseProxy(t, backend.URL)), true, false)
			res, body, infos := getWith1xx(t, front.Client(), front.URL)
			if res.StatusCode != http.StatusOK || body != "ok" {
				t.Fatalf("got %d %q", res.StatusCode, body)
			}
			for name, w := range want {
				if got := res.Header[name]; !slices.Equal(got, w) {
					t.Errorf("final %s = %q, want %q", name, got, w)
				}
			}
			if earlyHints != (len(infos) == 1) {
				t.Fatalf("client saw %d 1xx", len(infos))
			}
			for _, h := range infos { // untouched
				if h.Get("X-Internal") != "hint" || h.Get("X-A") != "" || h.Get("Cache-Control") != "" {
					t.Errorf("103 was changed: %v", h)
				}
			}
		})
	}
}

// TestRouteHeadersWriterPaths: the response operations reach the final
// header however it goes out.
func TestRouteHeadersWriterPaths(t *testing.T) {
	t.Parallel()
	rh := RouteHeaders{Response: HeaderOps{Remove: []string{"X-Drop"}, Set: map[string]string{"X-Set": "s"}}}
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"nothing written", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Drop", "1") }},
		{"write only", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Drop", "1")
			_, _ = io.WriteString(w, "x")
		}},
		{"flush", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Drop", "1")
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}},
		{"WriteHeader after a cleared 1xx", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			clear(w.Header())
			w.Header().Set("X-Drop", "1")
			w.WriteHeader(http.StatusCreated)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, rh.Wrap(tc.handler), false, false)
			res, _, _ := getWith1xx(t, srv.Client(), srv.URL)
			if got := res.Header.Values("X-Set"); !slices.Equal(got, []string{"s"}) || res.Header.Get("X-Drop") != "" {
				t.Errorf("X-Set %q, X-Drop %q", got, res.Header.Get("X-Drop"))
			}
		})
	}
}

// TestRouteHeadersSharedValues: values are shared between requests, so a
// handler appending to a header that an operation set must not change what
// the next request gets (run with -race: no request writes shared memory).
func TestRouteHeadersSharedValues(t *testing.T) {
	t.Parallel()
	rh := RouteHeaders{
		Request:  HeaderOps{Set: map[string]string{"X-S": "v"}, Add: map[string]string{"X-N": "n"}},
		Response: HeaderOps{Set: map[string]string{"X-R": "r"}, Add: map[string]string{"X-RA": "a"}},
	}
	h := Chain(rh.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header["X-S"]; !slices.Equal(got, []string{"v"}) {
			t.Errorf("X-S %q", got)
		}
		if got := r.Header["X-N"]; !slices.Equal(got, []string{"n"}) {
			t.Errorf("X-N %q", got)
		}
		r.Header.Add("X-S", "mine")
		r.Header.Add("X-N", "mine")
		w.WriteHeader(http.StatusOK)
		w.Header().Add("X-R", "late") // after the header went out: no effect
		w.Header().Add("X-RA", "late")
	})), SecurityHeaders(fullPolicy()))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				h.ServeHTTP(rec, req)
				res := rec.Result()
				if got := res.Header["X-R"]; len(got) == 0 || got[0] != "r" {
					t.Errorf("X-R %q", got)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkRouteHeaders measures request and response operations together.
func BenchmarkRouteHeaders(b *testing.B) {
	rh := RouteHeaders{
		Request:  HeaderOps{Remove: []string{"Cookie"}, Set: map[string]string{"X-Tenant": "acme"}},
		Response: HeaderOps{Remove: []string{"X-Internal"}, Set: map[string]string{"Cache-Control": "no-store"}, Add: map[string]string{"X-Via-Route": "api"}},
	}
	h := rh.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	w := &benchWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// TestRouteHeadersLeaveCallersRequest: the request edits reach next but not
// the caller's request, whose headers the cache stage keys on.
func TestRouteHeadersLeaveCallersRequest(t *testing.T) {
	t.Parallel()
	var seen string
	h := RouteHeaders{Request: HeaderOps{Set: map[string]string{"Accept-Language": "en"}, Remove: []string{"Authorization"}}}.
		Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen = r.Header.Get("Accept-Language") + "|" + r.Header.Get("Authorization")
		}))
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Accept-Language", "fr")
	r.Header.Set("Authorization", "Bearer x")
	h.ServeHTTP(httptest.NewRecorder(), r)
	if seen != "en|" {
		t.Errorf("next saw %q, want \"en|\"", seen)
	}
	if r.Header.Get("Accept-Language") != "fr" || r.Header.Get("Authorization") != "Bearer x" {
		t.Errorf("caller's request changed: %v", r.Header)
	}
}
