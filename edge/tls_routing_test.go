package edge

import (
	"context"
	stdtls "crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestTLSRequestRules covers what the HTTPS handler decides beyond routing:
// Alt-Svc with the final status only, 421 for sites that may not answer on
// this connection.
func TestTLSRequestRules(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Set("Alt-Svc", `h3=":9999"`) // must never reach the client
		_, _ = w.Write([]byte("ok"))
	}))
	defer backend.Close()
	cfg := mustParse(t, `
global: {https_port: 8443}
sites:
  - hosts: [app.localhost, 127.0.0.1]
    tls: internal
    routes: [{upstream: [`+backend.URL+`]}]
  - hosts: [noh3.localhost]
    tls: internal
    http3: false
    routes: [{respond: {body: noh3}}]
  - hosts: [plain.localhost]
    tls: off
    routes: [{respond: {body: plain}}]
`)
	rt, err := NewRuntime(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	// A backend's 103 clears the header map: Alt-Svc must still be on the
	// final response, once. httptest.ResponseRecorder treats a 1xx as final,
	// so this one goes through a real HTTP/2 server.
	srv := httptest.NewUnstartedServer(rt)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	client := srv.Client()
	tc := client.Transport.(*http.Transport).TLSClientConfig
	tc.ServerName = "app.localhost" // the SNI the router checks against Host
	tc.InsecureSkipVerify = true    // httptest's certificate names example.com
	req, _ := http.NewRequest("GET", srv.URL+"/hints", nil)
	req.Host = "app.localhost"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Values("Alt-Svc"); resp.StatusCode != 200 || len(got) != 1 || got[0] != `h3=":8443"; ma=86400` {
		t.Fatalf("after a 103: %d, Alt-Svc %q; want 200 and ours exactly once", resp.StatusCode, got)
	}

	tests := []struct {
		name, host, sni, path string
		proto                 int
		local                 string
		status                int
		altSvc                string
	}{
		{"alt-svc once", "app.localhost", "app.localhost", "/", 2, "", 200, `h3=":8443"; ma=86400`},
		{"no alt-svc for http3: false", "noh3.localhost", "noh3.localhost", "/", 2, "", 200, ""},
		{"http3: false refuses h3", "noh3.localhost", "noh3.localhost", "/", 3, "", 421, ""},
		{"tls: off site over TLS", "plain.localhost", "plain.localhost", "/", 2, "", 421, ""},
		{"no SNI, local IP's site", "127.0.0.1", "", "/", 2, "127.0.0.1:8443", 200, `h3=":8443"; ma=86400`},
		{"no SNI, Host of another site", "noh3.localhost", "", "/", 2, "127.0.0.1:8443", 421, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.proto == 3 {
				// No h3 client here: call the handler as quic-go would.
				req := httptest.NewRequest("GET", "https://"+tt.host+tt.path, nil)
				req.ProtoMajor, req.ProtoMinor = 3, 0
				req.TLS = &stdtls.ConnectionState{ServerName: tt.sni}
				rec := httptest.NewRecorder()
				rt.ServeHTTP(rec, req)
				if rec.Code != tt.status {
					t.Fatalf("status %d, want %d", rec.Code, tt.status)
				}
				return
			}
			req := httptest.NewRequest("GET", "https://"+tt.host+tt.path, nil)
			req.TLS = &stdtls.ConnectionState{ServerName: tt.sni}
			if tt.local != "" {
				addr, _ := net.ResolveTCPAddr("tcp", tt.local)
				req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, addr))
			}
			req.ProtoMajor = tt.proto
			rec := httptest.NewRecorder()
			rt.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tt.status, rec.Body.String())
			}
			if got := rec.Result().Header.Values("Alt-Svc"); strings.Join(got, "|") != tt.altSvc {
				t.Fatalf("Alt-Svc %q, want exactly %q", got, tt.altSvc)
			}
		})
	}
}
