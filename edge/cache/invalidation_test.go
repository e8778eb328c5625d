package cache

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the
// target URI and same-origin Location / Content-Location.
func TestInvalidationAfterUnsafeMethods(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		method      string
		path        string
		status      int
		location    string // "SELF" is replaced by the front server's origin
		contentLoc  string
		invalidated bool
	}{
		{name: "POST target", method: "POST", path: "/a", status: 200, invalidated: true},
		{name: "PUT target", method: "PUT", path: "/a", status: 204, invalidated: true},
		{name: "DELETE target", method: "DELETE", path: "/a", status: 200, invalidated: true},
		{name: "PATCH target", method: "PATCH", path: "/a", status: 200, invalidated: true},
		{name: "custom unsafe method", method: "PURGE", path: "/a", status: 200, invalidated: true},
		{name: "POST error keeps", method: "POST", path: "/a", status: 500, invalidated: false},
		{name: "POST 404 keeps", method: "POST", path: "/a", status: 404, invalidated: false},
		{name: "relative Location", method: "POST", path: "/items", status: 201, location: "/a", invalidated: true},
		{name: "absolute same-origin Location", method: "POST", path: "/items", status: 303, location: "SELF/a", invalidated: true},
		{name: "Content-Location", method: "POST", path: "/items", status: 200, contentLoc: "a", invalidated: true},
		{name: "cross-origin Location ignored", method: "POST", path: "/items", status: 201, location: "http://elsewhere.example/a", invalidated: false},
		{name: "OPTIONS is safe", method: "OPTIONS", path: "/a", status: 200, invalidated: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var env *testEnv
			env = newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					w.Header().Set("Cache-Control", "max-age=60")
					_, _ = w.Write([]byte("resource"))
					return
				}
				if tc.location != "" {
					loc := tc.location
					if strings.HasPrefix(loc, "SELF") {
						loc = "http://" + r.Host + loc[4:]
					}
					w.Header().Set("Location", loc)
				}
				if tc.contentLoc != "" {
					w.Header().Set("Content-Location", tc.contentLoc)
				}
				w.WriteHeader(tc.status)
			})
			env.get("/a")
			env.waitIdle()
			expectStatus(t, env.get("/a"), "gatehouse; hit; ttl=60")
			r, err := env.do(tc.method, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tc.status {
				t.Fatalf("%s status = %d", tc.method, r.status)
			}
			wantCS := "gatehouse; fwd=method"
			if tc.method == "OPTIONS" {
				wantCS = "" // passed through untouched
			}
			expectStatus(t, r, wantCS)
			got := env.get("/a")
			want := "gatehouse; hit; ttl=60"
			if tc.invalidated {
				want = "gatehouse; fwd=uri-miss; stored"
			}
			expectStatus(t, got, want)
		})
	}
}

// Upgrade requests, CONNECT, OPTIONS and TRACE reach next with the client's
// own ResponseWriter; GET/HEAD and unsafe methods get wrappers that unwrap
// to it and flush.
func TestWriterPassThrough(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, newFakeClock())
	tests := []struct {
		method    string
		hdr       []string
		untouched bool
	}{
		{"GET", []string{"Upgrade", "websocket", "Connection", "Upgrade"}, true},
		{"CONNECT", nil, true},
		{"OPTIONS", nil, true},
		{"TRACE", nil, true},
		{"GET", nil, false},
		{"HEAD", nil, false},
		{"POST", nil, false},
		{"DELETE", nil, false},
	}
	for i, tc := range tests {
		t.Run(tc.method+strconv.Itoa(i), func(t *testing.T) {
			rec := httptest.NewRecorder()
			var got http.ResponseWriter
			var flushErr error
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = w
				w.WriteHeader(200)
				flushErr = http.NewResponseController(w).Flush()
			})
			req := httptest.NewRequest(tc.method, "http://example.com/ws", nil)
			for j := 0; j+1 < len(tc.hdr); j += 2 {
				req.Header.Set(tc.hdr[j], tc.hdr[j+1])
			}
			c.Handler(next).ServeHTTP(rec, req)
			if tc.untouched {
				if got != http.ResponseWriter(rec) {
					t.Fatalf("next got %T, want the original writer", got)
				}
				if rec.Header().Get("Cache-Status") != "" {
					t.Fatalf("untouched response got Cache-Status %q", rec.Header().Get("Cache-Status"))
				}
				return
			}
			u, ok := got.(interface{ Unwrap() http.ResponseWriter })
			if !ok || u.Unwrap() != http.ResponseWriter(rec) {
				t.Fatalf("wrapper %T does not unwrap to the client's writer", got)
			}
			if flushErr != nil || !rec.Flushed {
				t.Fatalf("flush through wrapper: %v, flushed %v", flushErr, rec.Flushed)
			}
		})
	}
}
