package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// TestRequestHeaders checks the exact request a backend receives.
func TestRequestHeaders(t *testing.T) {
	t.Parallel()
	backend := echoBackend(t)
	trusted := NewTrustedProxies([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	plain := NewProxy(newTestPool(t, nil, backend.URL), Options{Trusted: trusted, Logger: quietOptions().Logger})
	rewriting := NewProxy(newTestPool(t, func(u *config.Upstream) { u.HostHeader = "internal.svc" }, backend.URL), quietOptions())

	type want map[string][]string // header → values; nil values: absent
	tests := []struct {
		name    string
		handler http.Handler
		target  string
		setup   func(r *http.Request)
		host    string // want Host at the backend
		uri     string // want RequestURI at the backend ("" : same as target)
		want    want
	}{
		{
			name: "untrusted peer: forwarding headers replaced",
			setup: func(r *http.Request) {
				r.RemoteAddr = "203.0.113.5:40000"
				r.Header.Set("X-Forwarded-For", "6.6.6.6")
				r.Header.Set("X-Real-IP", "6.6.6.6")
				r.Header.Set("X-Forwarded-Proto", "https")
				r.Header.Set("X-Forwarded-Host", "evil.test")
				r.Header.Set("Forwarded", "for=6.6.6.6")
			},
			host: "example.com",
			want: want{
				"X-Forwarded-For":   {"203.0.113.5"},
				"X-Real-Ip":         {"203.0.113.5"},
				"X-Forwarded-Proto": {"http"},
				"X-Forwarded-Host":  {"example.com"},
				"Forwarded":         nil,
				"Via":               {"1.1 gatehouse"},
			},
		},
		{
			name: "trusted peer: chain appended, its proto and host kept",
			setup: func(r *http.Request) {
				r.RemoteAddr = "10.0.0.7:40000"
				r.Header.Add("X-Forwarded-For", "1.1.1.1, 10.0.0.9")
				r.Header.Add("X-Forwarded-For", "10.0.0.8")
				r.Header.Set("X-Real-IP", "6.6.6.6")
				r.Header.Set("X-Forwarded-Proto", "https")
				r.Header.Set("X-Forwarded-Host", "public.example")
			},
			host: "example.com",
			want: want{
				"X-Forwarded-For":   {"1.1.1.1, 10.0.0.9, 10.0.0.8, 10.0.0.7"},
				"X-Real-Ip":         {"1.1.1.1"},
				"X-Forwarded-Proto": {"https"},
				"X-Forwarded-Host":  {"public.example"},
			},
		},
		{
			name: "trusted peer without forwarding headers",
			setup: func(r *http.Request) {
				r.RemoteAddr = "10.0.0.7:40000"
			},
			host: "example.com",
			want: want{
				"X-Forwarded-For":   {"10.0.0.7"},
				"X-Real-Ip":         {"10.0.0.7"},
				"X-Forwarded-Proto": {"http"},
				"X-Forwarded-Host":  {"example.com"},
			},
		},
		{
			name: "TLS connection, HTTP/2, existing Via",
			setup: func(r *http.Request) {
				r.TLS = &tls.ConnectionState{}
				r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
				r.Header.Set("Via", "1.0 fred")
				r.Header.Add("Via", "1.1 p.example.net")
			},
			host: "example.com",
			want: want{
				"X-Forwarded-Proto": {"https"},
				"Via":               {"1.0 fred, 1.1 p.example.net, 2.0 gatehouse"},
			},
		},
		{
			name: "hop-by-hop headers removed",
			setup: func(r *http.Request) {
				r.Header.Set("Connection", "X-Secret, keep-alive")
				r.Header.Add("Connection", "X-Other")
				r.Header.Set("X-Secret", "1")
				r.Header.Set("X-Other", "1")
				r.Header.Set("Keep-Alive", "timeout=5")
				r.Header.Set("Proxy-Connection", "keep-alive")
				r.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
				r.Header.Set("Te", "gzip")
				r.Header.Set("Trailer", "X-Sum")
				r.Header.Set("X-End-To-End", "yes")
				r.Header.Set("User-Agent", "curl/8")
			},
			host: "example.com",
			want: want{
				"Connection": nil, "X-Secret": nil, "X-Other": nil, "Keep-Alive": nil,
				"Proxy-Connection": nil, "Proxy-Authorization": nil, "Te": nil, "Trailer": nil,
				"X-End-To-End": {"yes"},
				"User-Agent":   {"curl/8"},
			},
		},
		{
			name: "TE trailers passed",
			setup: func(r *http.Request) {
				r.Header.Set("Connection", "TE")
				r.Header.Set("Te", "trailers, deflate")
			},
			host: "example.com",
			want: want{"Te": {"trailers"}},
		},
		{
			name: "WebSocket handshake keeps Upgrade and Connection only; a 200 is relayed",
			setup: func(r *http.Request) {
				r.Header.Set("Connection", "keep-alive, Upgrade, X-Hop")
				r.Header.Set("X-Hop", "1")
				r.Header.Set("Keep-Alive", "timeout=5")
				r.Header.Set("Upgrade", "websocket")
				r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				r.Header.Set("Sec-WebSocket-Version", "13")
				r.Header.Set("Sec-WebSocket-Protocol", "chat")
				r.RemoteAddr = "203.0.113.5:40000"
			},
			host: "example.com",
			want: want{
				"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"X-Hop": nil, "Keep-Alive": nil,
				"Sec-Websocket-Key":      {"dGhlIHNhbXBsZSBub25jZQ=="},
				"Sec-Websocket-Version":  {"13"},
				"Sec-Websocket-Protocol": {"chat"},
				"X-Forwarded-For":        {"203.0.113.5"},
				"Via":                    {"1.1 gatehouse"},
			},
		},
		{
			name: "h2c upgrade is hop-by-hop: stripped",
			setup: func(r *http.Request) {
				r.Header.Set("Connection", "Upgrade, HTTP2-Settings")
				r.Header.Set("Upgrade", "h2c")
				r.Header.Set("HTTP2-Settings", "AAMAAABkAAQAAP__")
			},
			host: "example.com",
			want: want{"Connection": nil, "Upgrade": nil, "Http2-Settings": nil},
		},
		{
			name:   "escaped path and well-formed raw query kept, no default User-Agent",
			target: "/a%2Fb/c%20d;p?x=1&y=%7a+z&x=%41&e=",
			host:   "example.com",
			want:   want{"User-Agent": nil},
		},
		{
			name: "client Host kept",
			setup: func(r *http.Request) {
				r.Host = "App.Example.com:8443"
			},
			host: "App.Example.com:8443",
			want: want{"X-Forwarded-Host": {"App.Example.com:8443"}},
		},
		{
			name:    "host_header replaces Host",
			handler: rewriting,
			host:    "internal.svc",
			want:    want{"X-Forwarded-Host": {"example.com"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			target := tc.target
			if target == "" {
				target = "/p"
			}
			r := httptest.NewRequest(http.MethodGet, target, nil)
			if tc.setup != nil {
				tc.setup(r)
			}
			h := tc.handler
			if h == nil {
				h = plain
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			got := decodeSeen(t, rec.Body)
			if got.Host != tc.host {
				t.Errorf("Host %q, want %q", got.Host, tc.host)
			}
			wantURI := tc.uri
			if wantURI == "" {
				wantURI = target
			}
			if got.URI != wantURI {
				t.Errorf("RequestURI %q, want %q", got.URI, wantURI)
			}
			for k, v := range tc.want {
				if gv := got.Header[k]; fmt.Sprint(gv) != fmt.Sprint(v) || (v == nil) != (gv == nil) {
					t.Errorf("%s: got %q, want %q", k, gv, v)
				}
			}
		})
	}
}

func TestResponseHeadersAndTrailers(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Alt-Svc", `h3=":443"`)
		h.Set("Upgrade", "h2c")
		h.Set("Server", "backend/1.0")
		h.Set("X-Keep", "yes")
		h.Set("Trailer", "X-Declared")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "body")
		h.Set("X-Declared", "d")
		h.Set(http.TrailerPrefix+"X-Undeclared", "u")
	}))
	t.Cleanup(backend.Close)
	front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))

	res, err := front.Client().Get(front.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusAccepted || string(body) != "body" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Authenticate", "Alt-Svc", "Upgrade"} {
		if v, ok := res.Header[k]; ok {
			t.Errorf("%s passed through: %q", k, v)
		}
	}
	if c := res.Header.Get("Connection"); strings.Contains(strings.ToLower(c), "x-hop") {
		t.Errorf("Connection passed through: %q", c)
	}
	if res.Header.Get("Server") != "backend/1.0" || res.Header.Get("X-Keep") != "yes" {
		t.Errorf("end-to-end headers lost: %v", res.Header)
	}
	if res.Trailer.Get("X-Declared") != "d" || res.Trailer.Get("X-Undeclared") != "u" {
		t.Errorf("trailers %v", res.Trailer)
	}
}

func TestRequestTrailersAndBody(t *testing.T) {
	t.Parallel()
	front := serveProxy(t, NewProxy(newTestPool(t, nil, echoBackend(t).URL), quietOptions()))

	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPut, front.URL+"/up", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{"X-Checksum": nil}
	go func() {
		io.WriteString(pw, "hello, ")
		io.WriteString(pw, "world")
		req.Trailer.Set("X-Checksum", "abc")
		pw.Close()
	}()
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got := decodeSeen(t, res.Body)
	if got.Body != "hello, world" {
		t.Errorf("body %q", got.Body)
	}
	if got.Trailer.Get("X-Checksum") != "abc" {
		t.Errorf("request trailers %v", got.Trailer)
	}
}

// TestStreamingFlush checks that event streams and unknown-length responses
// reach the client chunk by chunk, before the backend finishes.
func TestStreamingFlush(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		length      string // Content-Length the backend declares ("" none)
	}{
		{"server-sent events", "text/event-stream; charset=utf-8", ""},
		{"unknown length", "application/octet-stream", ""},
		{"server-sent events with a length", "text/event-stream", "45"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			next := make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				if tc.length != "" {
					w.Header().Set("Content-Length", tc.length)
				}
				rc := http.NewResponseController(w)
				for i := 1; i <= 3; i++ {
					fmt.Fprintf(w, "data: event %d\n\n", i) // 15 bytes
					if err := rc.Flush(); err != nil {
						return
					}
					if i < 3 {
						select {
						case <-next:
						case <-r.Context().Done():
							return
						}
					}
				}
			}))
			t.Cleanup(backend.Close)
			front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))

			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front.URL+"/events", nil)
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			br := bufio.NewReader(res.Body)
			for i := 1; i <= 3; i++ {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("event %d: %v (not flushed?)", i, err)
				}
				if want := fmt.Sprintf("data: event %d\n", i); line != want {
					t.Fatalf("got %q, want %q", line, want)
				}
				if blank, err := br.ReadString('\n'); err != nil || blank != "\n" {
					t.Fatalf("event %d separator %q, %v", i, blank, err)
				}
				if i < 3 {
					next <- struct{}{} // the backend sends the next event only now
				}
			}
		})
	}
}
