package edge

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWebSocketReloadAndShutdown runs a real server with a proxied route to
// a WebSocket echo backend: a tunnel survives a reload (in-flight work
// finishes on the old runtime), the route's max_tunnels holds across the
// reload (limits count per route key in the server's one Registry), and
// shutdown closes the tunnel and says how many it closed.
func TestWebSocketReloadAndShutdown(t *testing.T) {
	t.Parallel()
	backend := echoServer(t, "")
	doc := fmt.Sprintf(`
global: {listen: 127.0.0.1, http_port: 1, admin: "off"}
sites:
  - hosts: ["*"]
    tls: off
    routes:
      - path: /ws
        upstream: [%s]
        websocket: {max_tunnels: 1, idle_timeout: %%s}
`, backend.URL)
	logs := &syncBuf{}
	srv, stop := serving(t, mustParse(t, fmt.Sprintf(doc, "1m")), slog.New(slog.NewJSONHandler(logs, nil)))
	url := "ws://" + srv.Addr().String() + "/ws"

	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	echo := func(msg string) {
		t.Helper()
		if err := c.Write(dctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.Read(dctx); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q, %v", msg, got, err)
		}
	}
	echo("before reload")

	cfg2 := mustParse(t, fmt.Sprintf(doc, "2m"))
	cfg2.Global.HTTPPort = 0
	if err := srv.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	echo("after reload")
	if _, res, err := websocket.Dial(dctx, url, nil); err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second tunnel after reload: %v %v, want 503 (max_tunnels 1)", res, err)
	}
	if n := srv.Tunnels().Count(); n != 1 {
		t.Errorf("registry counts %d tunnels, want 1", n)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, _, err := c.Read(dctx); err == nil {
		t.Error("tunnel survived shutdown")
	}
	// The tunnel's line is written just after its Run returned: poll.
	var all string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if all = logs.String(); strings.Contains(all, `"msg":"websocket closed"`) {
			break
		}
	}
	if !strings.Contains(all, `"msg":"closed websocket tunnels","count":1`) {
		t.Errorf("no shutdown count in logs:\n%s", all)
	}
	// The access log has the handshake (101); the tunnel's end has its own
	// line with the bytes both ways.
	if !strings.Contains(all, `"path":"/ws","status":101`) || !strings.Contains(all, `"msg":"websocket closed","route":"*/ws"`) ||
		!strings.Contains(all, `"reason":"closed"`) {
		t.Errorf("access log or tunnel line missing:\n%s", all)
	}
	if n := srv.Tunnels().Count(); n != 0 {
		t.Errorf("%d tunnels left after Serve returned", n)
	}
}
