package edge

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestRouteKeyFollowsAuth: revoking credentials changes the route's tunnel
// key, so its tunnels are closed after reload_grace.
func TestRouteKeyFollowsAuth(t *testing.T) {
	t.Parallel()
	doc := `
sites:
  - hosts: [a.example]
    tls: off
    routes: [{path: /ws, upstream: ["http://127.0.0.1:9"], auth: {bearer: [%s]}}]
`
	a := mustParse(t, fmt.Sprintf(doc, "token-aaaaaaaaaaaaaaaa"))
	b := mustParse(t, fmt.Sprintf(doc, "token-bbbbbbbbbbbbbbbb"))
	ka, kb := routeKey(a.Sites[0], a.Sites[0].Routes[0]), routeKey(b.Sites[0], b.Sites[0].Routes[0])
	if ka == kb || !strings.HasPrefix(ka, "a.example/ws#") {
		t.Errorf("keys %q and %q: want different keys when auth changes", ka, kb)
	}
}

// TestPlanDoesNotExpandEnvironment: POST /plan never shows the gateway's
// environment, whatever the posted file asks for.
func TestPlanDoesNotExpandEnvironment(t *testing.T) {
	t.Setenv("GH_PLAN_SECRET", "sup3rs3cret-value")
	srv, err := New(mustParse(t, adminDoc), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Runtime().Close(); srv.closeCache() })
	for _, body := range []string{
		"sites: [{hosts: [a.example], tls: off, routes: [{redirect: {to: \"${GH_PLAN_SECRET}\"}}]}]\n",
		"sites: [{hosts: [a.example], tls: off, routes: [{path: \"/${GH_PLAN_SECRET}\", respond: {}}]}]\n",
	} {
		w := httptest.NewRecorder()
		srv.adminHandler().ServeHTTP(w, httptest.NewRequest("POST", "http://127.0.0.1:2019/plan", strings.NewReader(body)))
		if strings.Contains(w.Body.String(), "sup3rs3cret") {
			t.Errorf("/plan answer shows the environment: %s", w.Body.String())
		}
	}
}

// TestRestoredRouteKeepsNewTunnels: a route removed by one reload and put
// back by the next within reload_grace keeps the tunnels opened after it
// came back.
func TestRestoredRouteKeepsNewTunnels(t *testing.T) {
	t.Parallel()
	backend := echoServer(t, "a")
	with := fmt.Sprintf(`
global: {listen: 127.0.0.1, http_port: 1, admin: "off", reload_grace: 300ms}
sites:
  - hosts: ["*"]
    tls: off
    routes: [{path: /ws, upstream: [%s]}, {path: /, respond: {}}]
`, backend.URL)
	without := `
global: {listen: 127.0.0.1, http_port: 1, admin: "off", reload_grace: 300ms}
sites: [{hosts: ["*"], tls: off, routes: [{path: /, respond: {}}]}]
`
	srv, _ := serving(t, mustParse(t, with), quiet())
	reload := func(doc string) {
		c := mustParse(t, doc)
		c.Global.HTTPPort = 0
		if err := srv.Reload(c); err != nil {
			t.Fatal(err)
		}
	}
	reload(without)
	reload(with)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, "ws://"+srv.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	// Wait out the first reload's grace period, then the tunnel must echo.
	for deadline := time.Now().Add(600 * time.Millisecond); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Write(dctx, websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.Read(dctx); err != nil || string(got) != "a:x" {
		t.Fatalf("tunnel on the restored route: %q %v", got, err)
	}
}
