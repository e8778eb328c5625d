package edge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustParse(t *testing.T, doc string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const respondDoc = `
global: {listen: 127.0.0.1, http_port: 1, admin: "off"}
sites:
  - hosts: ["*"]
    tls: off
    routes: [{path: /, respond: {body: "%s"}}]
`

func TestNewRuntimeRefusesUnsupported(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `
sites:
  - hosts: [example.com]
    tls: off
    routes: [{path: /, static: {root: .}}]
`)
	_, err := NewRuntime(cfg, quiet())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "test.yaml:") {
		t.Fatalf("err = %v, want ErrUnsupported naming the position", err)
	}
}

// TestServeReloadShutdown runs a real listener: requests are answered by the
// current runtime, a reload swaps it, and cancelling the context stops Serve.
func TestServeReloadShutdown(t *testing.T) {
	t.Parallel()
	srv, stop := serving(t, mustParse(t, strings.Replace(respondDoc, "%s", "one", 1)), quiet())
	url := "http://" + srv.Addr().String() + "/"

	if got := get(t, url); got != "one" {
		t.Fatalf("body %q, want one", got)
	}
	two := mustParse(t, strings.Replace(respondDoc, "%s", "two", 1))
	two.Global.HTTPPort = 0 // the same listener settings as the running config
	if err := srv.Reload(two); err != nil {
		t.Fatal(err)
	}
	// A change the running listeners cannot follow is refused whole.
	moved := mustParse(t, strings.Replace(respondDoc, "%s", "moved", 1))
	if err := srv.Reload(moved); !errors.Is(err, ErrNeedsRestart) {
		t.Fatalf("reload with another http_port: %v, want ErrNeedsRestart", err)
	}
	if got := get(t, url); got != "two" {
		t.Fatalf("after a refused reload: body %q, want two", got)
	}
	if got := get(t, url); got != "two" {
		t.Fatalf("after reload: body %q, want two", got)
	}
	// A config this build cannot serve is refused and the old one keeps serving.
	bad := mustParse(t, "sites: [{hosts: [a.example], tls: off, routes: [{static: {root: .}}]}]")
	bad.Global.HTTPPort = 0
	if err := srv.Reload(bad); err == nil {
		t.Fatal("reload of an unservable config succeeded")
	}
	if got := get(t, url); got != "two" {
		t.Fatalf("after failed reload: body %q, want two", got)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get(url); err == nil {
		t.Fatal("listener still accepts after shutdown")
	}
	// A reload arriving after Serve returned starts nothing.
	if err := srv.Reload(two); !errors.Is(err, ErrStopped) {
		t.Fatalf("reload after stop: %v, want ErrStopped", err)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPlainHTTPRedirectsTLSSites(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `
global: {https_port: 8443}
sites:
  - hosts: [secure.localhost]
    tls: internal
    routes: [{respond: {body: secure}}]
  - hosts: [plain.example]
    tls: off
    routes: [{respond: {body: plain}}]
`)
	rt, err := NewRuntime(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target, host string
		status       int
		location     string
	}{
		{"/a/b?q=1&r=%20", "secure.localhost:8080", 308, "https://secure.localhost:8443/a/b?q=1&r=%20"},
		{"/", "plain.example", 200, ""},
		{"/", "nobody.example", 404, ""},
	}
	for _, tt := range tests {
		req := httptest.NewRequest("GET", tt.target, nil)
		req.Host = tt.host
		rec := httptest.NewRecorder()
		rt.httpHandler.ServeHTTP(rec, req)
		if rec.Code != tt.status || rec.Header().Get("Location") != tt.location {
			t.Errorf("%s%s: %d %q, want %d %q", tt.host, tt.target, rec.Code, rec.Header().Get("Location"), tt.status, tt.location)
		}
	}
}

func TestHTTPSAuthority(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host string
		port int
		want string
	}{
		{"example.com", 443, "example.com"},
		{"example.com:80", 443, "example.com"},
		{"example.com:8080", 8443, "example.com:8443"},
		{"[::1]:8080", 8443, "[::1]:8443"},
		{"::1", 443, "[::1]"},
	}
	for _, tt := range tests {
		if got := httpsAuthority(tt.host, tt.port); got != tt.want {
			t.Errorf("httpsAuthority(%q, %d) = %q, want %q", tt.host, tt.port, got, tt.want)
		}
	}
}

// serving starts a Server for cfg on a kernel-picked HTTP port and serves
// it in the background. stop cancels Serve and returns its error (failing
// the test if it does not return within 10 s); it also runs at cleanup, so
// calling it is optional and safe twice.
func serving(t *testing.T, cfg *config.Config, log *slog.Logger) (srv *Server, stop func() error) {
	t.Helper()
	cfg.Global.HTTPPort = 0 // Parse rejects 0 from files
	srv, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("Serve did not return after cancel")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { _ = stop() })
	return srv, stop
}
