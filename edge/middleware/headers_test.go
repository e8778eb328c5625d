package middleware

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"sync"
	"testing"
	"time"
)

func TestHSTSValue(t *testing.T) {
	t.Parallel()
	const year = 365 * 24 * time.Hour
	tests := []struct {
		maxAge              time.Duration
		subdomains, preload bool
		want                string
	}{
		{year, true, true, "max-age=31536000; includeSubDomains; preload"},
		{year, false, false, "max-age=31536000"},
		{time.Hour, true, false, "max-age=3600; includeSubDomains"},
		{time.Hour, false, true, "max-age=3600; preload"},
		{1500 * time.Millisecond, false, false, "max-age=1"},
		{0, false, false, "max-age=0"},
		{-time.Hour, true, false, "max-age=0; includeSubDomains"},
	}
	for _, tc := range tests {
		if got := HSTSValue(tc.maxAge, tc.subdomains, tc.preload); got != tc.want {
			t.Errorf("HSTSValue(%v, %v, %v) = %q, want %q", tc.maxAge, tc.subdomains, tc.preload, got, tc.want)
		}
	}
}

func TestDefaultSecurityPolicy(t *testing.T) {
	t.Parallel()
	want := SecurityPolicy{ContentTypeOptions: "nosniff", ReferrerPolicy: "strict-origin-when-cross-origin", FrameOptions: "SAMEORIGIN"}
	if got := DefaultSecurityPolicy(); got != want {
		t.Fatalf("DefaultSecurityPolicy() = %+v, want %+v", got, want)
	}
}

// fullPolicy sets every header.
func fullPolicy() SecurityPolicy {
	p := DefaultSecurityPolicy()
	p.HSTS = HSTSValue(365*24*time.Hour, true, true)
	p.CSP = "default-src 'self'"
	p.PermissionsPolicy = "geolocation=()"
	return p
}

// fullHeaders is what fullPolicy adds to a TLS response without backend headers.
func fullHeaders() map[string]string {
	return map[string]string{
		"Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
		"X-Content-Type-Options":    "nosniff",
		"Referrer-Policy":           "strict-origin-when-cross-origin",
		"X-Frame-Options":           "SAMEORIGIN",
		"Content-Security-Policy":   "default-src 'self'",
		"Permissions-Policy":        "geolocation=()",
	}
}

// noSecurityHeaders has every security header absent.
func noSecurityHeaders() map[string]string {
	m := fullHeaders()
	for k := range m {
		m[k] = ""
	}
	return m
}

// with returns a copy of m changed by kv pairs ("" = must be absent).
func with(m map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// checkHeaders wants each name with exactly the one value given, or absent for "".
func checkHeaders(t *testing.T, where string, h http.Header, want map[string]string) {
	t.Helper()
	for name, v := range want {
		got := h.Values(name)
		switch {
		case v == "" && len(got) != 0:
			t.Errorf("%s: %s = %q, want none", where, name, got)
		case v != "" && (len(got) != 1 || got[0] != v):
			t.Errorf("%s: %s = %q, want exactly [%q]", where, name, got, v)
		}
	}
}

// startServer starts h over TLS (HTTP/1.1, or HTTP/2 with h2) or plain HTTP.
func startServer(t *testing.T, h http.Handler, useTLS, h2 bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = h2
	if useTLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	t.Cleanup(srv.Client().CloseIdleConnections)
	return srv
}

// reverseProxy is httputil.ReverseProxy over the backend at rawURL: it
// relays 1xx responses (clearing the header map after each) and copies the
// backend's header into the map before the final WriteHeader.
func reverseProxy(t *testing.T, rawURL string) *httputil.ReverseProxy {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }}
	rp.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	return rp
}

// getWith1xx GETs url and returns the response, its body and the headers of
// the 1xx responses the client saw.
func getWith1xx(t *testing.T, client *http.Client, url string) (*http.Response, string, []textproto.MIMEHeader) {
	t.Helper()
	var mu sync.Mutex
	var infos []textproto.MIMEHeader
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
			mu.Lock()
			defer mu.Unlock()
			infos = append(infos, h)
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return res, string(body), infos
}

// TestSecurityHeadersThroughProxy puts SecurityHeaders in front of a real
// reverse proxy and backend, over TLS and plain HTTP, with and without a
// 103 Early Hints before the final response.
func TestSecurityHeadersThroughProxy(t *testing.T) {
	t.Parallel()
	backendSets := map[string]string{"X-Frame-Options": "DENY", "Server": "backend/1.0", "X-Powered-By": "PHP/8"}
	keepServer := fullPolicy()
	keepServer.KeepServer = true
	override := fullPolicy()
	override.Override = true
	tests := []struct {
		name       string
		tls, h2    bool
		policy     SecurityPolicy
		earlyHints bool
		want       map[string]string
	}{
		{name: "TLS, backend wins", tls: true, policy: fullPolicy(),
			want: with(fullHeaders(), "X-Frame-Options", "DENY", "Server", "", "X-Powered-By", "")},
		{name: "TLS, override", tls: true, policy: override,
			want: with(fullHeaders(), "Server", "", "X-Powered-By", "")},
		{name: "TLS, keep Server", tls: true, policy: keepServer,
			want: with(fullHeaders(), "X-Frame-Options", "DENY", "Server", "backend/1.0", "X-Powered-By", "PHP/8")},
		{name: "HTTP/2, backend wins", tls: true, h2: true, policy: fullPolicy(),
			want: with(fullHeaders(), "X-Frame-Options", "DENY", "Server", "", "X-Powered-By", "")},
		{name: "plain: no security headers", policy: override,
			want: with(noSecurityHeaders(), "X-Frame-Options", "DENY", "Server", "", "X-Powered-By", "")},
		{name: "plain, keep Server: untouched", policy: keepServer,
			want: with(noSecurityHeaders(), "X-Frame-Options", "DENY", "Server", "backend/1.0", "X-Powered-By", "PHP/8")},
		{name: "TLS, empty policy, keep Server", tls: true, policy: SecurityPolicy{KeepServer: true},
			want: with(noSecurityHeaders(), "X-Frame-Options", "DENY", "Server", "backend/1.0")},
		{name: "TLS, 103 first", tls: true, policy: override, earlyHints: true,
			want: with(fullHeaders(), "Server", "", "X-Powered-By", "")},
		{name: "HTTP/2, 103 first", tls: true, h2: true, policy: fullPolicy(), earlyHints: true,
			want: with(fullHeaders(), "X-Frame-Options", "DENY", "Server", "", "X-Powered-By", "")},
		{name: "plain, 103 first", policy: fullPolicy(), earlyHints: true,
			want: with(noSecurityHeaders(), "X-Frame-Options", "DENY", "Server", "", "X-Powered-By", "")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				if tc.earlyHints {
					h.Set("Link", "</style.css>; rel=preload; as=style")
					w.WriteHeader(http.StatusEarlyHints)
					clear(h)
				}
				for k, v := range backendSets {
					h.Set(k, v)
				}
				_, _ = io.WriteString(w, "hello")
			}), false, false)
			front := startServer(t, SecurityHeaders(tc.policy)(reverseProxy(t, backend.URL)), tc.tls, tc.h2)
			res, body, infos := getWith1xx(t, front.Client(), front.URL)
			if res.StatusCode != http.StatusOK || body != "hello" {
				t.Fatalf("got %d %q", res.StatusCode, body)
			}
			if wantMajor := map[bool]int{false: 1, true: 2}[tc.h2]; res.ProtoMajor != wantMajor {
				t.Fatalf("proto %s", res.Proto)
			}
			checkHeaders(t, "final", res.Header, tc.want)
			if tc.earlyHints != (len(infos) == 1) {
				t.Fatalf("client saw %d 1xx, want a 103: %v", len(infos), tc.earlyHints)
			}
			for _, h := range infos { // 1xx pass untouched
				checkHeaders(t, "103", http.Header(h), with(noSecurityHeaders(), "Link", "</style.css>; rel=preload; as=style"))
			}
		})
	}
}

// TestSecurityHeadersWriterPaths checks every way the final header can go
// out, and that a handler that never writes (or panics) is covered too.
func TestSecurityHeadersWriterPaths(t *testing.T) {
	t.Parallel()
	want := with(fullHeaders(), "Server", "", "X-Powered-By", "")
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		wantCode int
		want     map[string]string
	}{
		{"nothing written", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Server", "inner")
		}, http.StatusOK, want},
		{"write only", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Powered-By", "inner")
			_, _ = w.Write([]byte("x"))
		}, http.StatusOK, want},
		{"WriteHeader 204", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNoContent)
		}, http.StatusNoContent, want},
		{"flush through ResponseController", func(w http.ResponseWriter, r *http.Request) {
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}, http.StatusOK, want},
		{"type-asserted Flusher, inner value wins", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Referrer-Policy", "no-referrer")
			w.(http.Flusher).Flush()
		}, http.StatusOK, with(want, "Referrer-Policy", "no-referrer")},
		{"1xx clears the map, then the backend's header is added", func(w http.ResponseWriter, r *http.Request) {
			h := w.Header() // what httputil.ReverseProxy does
			h.Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			clear(h)
			h.Add("X-Frame-Options", "DENY")
			h.Add("Server", "backend")
			w.WriteHeader(http.StatusAccepted)
		}, http.StatusAccepted, with(want, "X-Frame-Options", "DENY")},
		{"deadline and full duplex through Unwrap", func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
				t.Errorf("SetWriteDeadline: %v", err)
			}
			if err := rc.EnableFullDuplex(); err != nil {
				t.Errorf("EnableFullDuplex: %v", err)
			}
		}, http.StatusOK, want},
		{"panic before writing", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Server", "inner")
			panic("boom")
		}, http.StatusInternalServerError, want},
		{"panic after a 1xx", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			clear(w.Header())
			panic("boom")
		}, http.StatusInternalServerError, want},
	}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, Chain(tc.handler, Recover(log), SecurityHeaders(fullPolicy())), true, false)
			res, _, _ := getWith1xx(t, srv.Client(), srv.URL)
			if res.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", res.StatusCode, tc.wantCode)
			}
			checkHeaders(t, "final", res.Header, tc.want)
		})
	}
}

// TestSecurityHeadersStreaming checks that a flush sends the header (with
// the security headers) and the first chunk before the handler finishes.
func TestSecurityHeadersStreaming(t *testing.T) {
	t.Parallel()
	gotFirst := make(chan struct{})
	srv := startServer(t, SecurityHeaders(fullPolicy())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: 1\n\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush: %v", err)
			return
		}
		select { // the client must see the first event while we wait
		case <-gotFirst:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: 2\n\n")
	})), true, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	checkHeaders(t, "streamed", res.Header, fullHeaders())
	br := bufio.NewReader(res.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "data: 1\n" {
		t.Fatalf("first line %q, %v", first, err)
	}
	close(gotFirst)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: 2\n\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// TestSecurityHeadersSwitchingProtocols checks the 101 path: hijacking
// works through the writer, and a 101 only loses Server and X-Powered-By
// (route header operations apply to it like to any final response).
func TestSecurityHeadersSwitchingProtocols(t *testing.T) {
	t.Parallel()
	// echo answers a protocol switch to "echo" and echoes one line. mode
	// "writeheader": WriteHeader(101), then Hijack (what Gatehouse's
	// forwarder does); "hijack": Hijack, then write the header map by hand
	// (what httputil.ReverseProxy does).
	// inner: set Server and X-Powered-By.
	echo := func(mode string, inner bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Connection", "Upgrade")
			h.Set("Upgrade", "echo")
			if inner {
				h.Set("Server", "inner")
				h.Set("X-Powered-By", "inner")
			}
			rc := http.NewResponseController(w)
			if mode == "writeheader" {
				w.WriteHeader(http.StatusSwitchingProtocols)
			}
			conn, brw, err := rc.Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			if mode == "hijack" {
				res := &http.Response{StatusCode: http.StatusSwitchingProtocols, ProtoMajor: 1, ProtoMinor: 1, Header: h}
				if err := res.Write(brw); err != nil {
					t.Errorf("writing the 101: %v", err)
					return
				}
			}
			if err := brw.Flush(); err != nil {
				return
			}
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, line)
		}
	}
	routeOps := RouteHeaders{Response: HeaderOps{Set: map[string]string{"X-Route": "on"}}}
	tests := []struct {
		name  string
		tls   bool
		front func(t *testing.T) http.Handler
	}{
		{"TLS, WriteHeader then Hijack", true, func(*testing.T) http.Handler { return echo("writeheader", true) }},
		{"TLS, Hijack then header by hand", true, func(*testing.T) http.Handler { return echo("hijack", true) }},
		{"plain, WriteHeader then Hijack", false, func(*testing.T) http.Handler { return echo("writeheader", true) }},
		{"TLS, through httputil.ReverseProxy", true, func(t *testing.T) http.Handler {
			// The backend sends no Server: what ReverseProxy copies into
			// the map after its Hijack (the backend's 101 header) is beyond
			// reach. Gatehouse's forwarder copies it before WriteHeader(101).
			backend := startServer(t, echo("writeheader", false), false, false)
			return reverseProxy(t, backend.URL)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := Chain(tc.front(t), SecurityHeaders(fullPolicy()), routeOps.Wrap)
			srv := startServer(t, h, tc.tls, false)
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "echo")
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", res.StatusCode)
			}
			checkHeaders(t, "101", res.Header, with(noSecurityHeaders(), "Server", "", "X-Powered-By", "", "X-Route", "on"))
			rw, ok := res.Body.(io.ReadWriter)
			if !ok {
				t.Fatalf("101 body %T is not writable", res.Body)
			}
			if _, err := io.WriteString(rw, "ping\n"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(rw).ReadString('\n')
			if err != nil || line != "ping\n" {
				t.Fatalf("echo %q, %v", line, err)
			}
		})
	}
}

// benchWriter is a ResponseWriter that allocates nothing.
type benchWriter struct{ h http.Header }

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(int)             {}

// BenchmarkSecurityHeaders measures the stage alone (the handler and writer
// allocate nothing): one allocation, the writer, is the aim.
func BenchmarkSecurityHeaders(b *testing.B) {
	serverVals := []string{"backend"}
	body := []byte("hello")
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Server"] = serverVals
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})
	for _, bc := range []struct {
		name string
		tls  bool
		p    SecurityPolicy
	}{
		{"tls", true, fullPolicy()},
		{"plain", false, fullPolicy()},
		{"plain keep server", false, SecurityPolicy{KeepServer: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := SecurityHeaders(bc.p)(inner)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if bc.tls {
				req.TLS = &tls.ConnectionState{}
			} else {
				req.TLS = nil
			}
			w := &benchWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
			if bc.tls && w.h.Get("X-Frame-Options") != "SAMEORIGIN" {
				b.Fatal("headers not set")
			}
		})
	}
}

// TestSecurityHeadersPlainDropsBackendHSTS: over plain HTTP even a
// backend's Strict-Transport-Security is removed (RFC 6797 §7.2), with
// keep_server or not.
func TestSecurityHeadersPlainDropsBackendHSTS(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		p := DefaultSecurityPolicy()
		p.KeepServer = keep
		h := SecurityHeaders(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Strict-Transport-Security", "max-age=999")
			w.Header().Set("Server", "origin")
		}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "http://plain.example/", nil))
		if got := w.Result().Header.Get("Strict-Transport-Security"); got != "" {
			t.Errorf("keep_server=%v: plain response kept HSTS %q", keep, got)
		}
		if got := w.Result().Header.Get("Server"); (got != "") != keep {
			t.Errorf("keep_server=%v: Server = %q", keep, got)
		}
	}
}
