package edge

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// echoServer is a WebSocket echo backend; a non-empty name prefixes each
// echo with "name:" so tests can tell backends apart.
func echoServer(t *testing.T, name string) *httptest.Server {
	t.Helper()
	prefix := ""
	if name != "" {
		prefix = name + ":"
	}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if c.Write(context.Background(), typ, append([]byte(prefix), msg...)) != nil {
				return
			}
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// TestReloadKeepsUnchanged: a reload carries unchanged pools over (same
// object, still started) and keeps tunnels of unchanged routes open, while
// tunnels of a removed route and of a route whose upstream changed are
// closed after reload_grace, not before.
func TestReloadKeepsUnchanged(t *testing.T) {
	t.Parallel()
	a, b := echoServer(t, "a"), echoServer(t, "b")
	doc := func(change, gone string) string {
		return fmt.Sprintf(`
global: {listen: 127.0.0.1, http_port: 1, admin: "off", reload_grace: 300ms}
upstreams:
  api: {backends: [{url: %q}]}
sites:
  - hosts: ["*"]
    tls: off
    routes:
      - {path: /keep, upstream: api}
      - {path: /change, upstream: [%s]}
%s`, a.URL, change, gone)
	}
	srv, _ := serving(t, mustParse(t, doc(a.URL, "      - {path: /gone, upstream: ["+a.URL+"]}\n")), quiet())

	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer dcancel()
	dial := func(path string) *websocket.Conn {
		c, _, err := websocket.Dial(dctx, "ws://"+srv.Addr().String()+path, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	echo := func(c *websocket.Conn, msg string) (string, error) {
		if err := c.Write(dctx, websocket.MessageText, []byte(msg)); err != nil {
			return "", err
		}
		_, got, err := c.Read(dctx)
		return string(got), err
	}
	keep, change, gone := dial("/keep"), dial("/change"), dial("/gone")
	for _, c := range []*websocket.Conn{keep, change, gone} {
		if got, err := echo(c, "hi"); err != nil || got != "a:hi" {
			t.Fatalf("echo before reload: %q %v", got, err)
		}
	}
	oldAPI := srv.Runtime().pools["api"]

	cfg2 := mustParse(t, doc(b.URL, ""))
	cfg2.Global.HTTPPort = 0
	reloaded := time.Now()
	if err := srv.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	if srv.Runtime().pools["api"] != oldAPI {
		t.Error("unchanged pool api was rebuilt, want it carried over")
	}
	// Within the grace period all three still work (the changed route's
	// tunnel still reaches its old backend).
	for _, c := range []*websocket.Conn{keep, change, gone} {
		if got, err := echo(c, "grace"); err != nil || got != "a:grace" {
			if time.Since(reloaded) < 250*time.Millisecond {
				t.Fatalf("echo within grace: %q %v", got, err)
			}
		}
	}
	// After it, the changed and removed routes' tunnels are closed.
	for _, c := range []*websocket.Conn{change, gone} {
		if _, _, err := c.Read(dctx); err == nil {
			t.Error("tunnel of a changed or removed route still open after the grace period")
		}
	}
	if time.Since(reloaded) < 300*time.Millisecond {
		t.Errorf("tunnels closed after %v, before reload_grace", time.Since(reloaded))
	}
	if got, err := echo(keep, "after"); err != nil || got != "a:after" {
		t.Errorf("tunnel of the unchanged route: %q %v", got, err)
	}
	// New tunnels on the changed route reach the new backend.
	if got, err := echo(dial("/change"), "new"); err != nil || got != "b:new" {
		t.Errorf("changed route after reload: %q %v", got, err)
	}
}
