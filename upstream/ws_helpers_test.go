package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsBackend is a real WebSocket echo server (github.com/coder/websocket).
// Text messages of the form "close CODE REASON" make it close with that
// code; "abort" makes it drop the TCP connection without a close frame;
// "header NAME" makes it answer with that header of its handshake request.
// Every connection's end (the close status it saw) is sent on ends.
type wsBackend struct {
	*httptest.Server
	handshakes atomic.Int64
	ends       chan wsEnd
	mu         sync.Mutex
	conns      map[*websocket.Conn]struct{}
}

type wsEnd struct {
	code   websocket.StatusCode // -1: no close frame (EOF, reset)
	reason string
}

const wsReadLimit = 32 << 20

func newWSBackend(t testing.TB, tlsOn bool) *wsBackend {
	return newWSBackendWith(t, tlsOn, nil)
}

// newWSBackendWith is newWSBackend with configure run on the server before
// it starts.
func newWSBackendWith(t testing.TB, tlsOn bool, configure func(*http.Server)) *wsBackend {
	t.Helper()
	b := &wsBackend{ends: make(chan wsEnd, 2048), conns: map[*websocket.Conn]struct{}{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.handshakes.Add(1)
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat.v2", "chat.v1"}})
		if err != nil {
			return
		}
		b.track(c, true)
		defer b.track(c, false)
		c.SetReadLimit(wsReadLimit)
		ctx := context.Background()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				var ce websocket.CloseError
				end := wsEnd{code: -1}
				if errors.As(err, &ce) {
					end = wsEnd{code: ce.Code, reason: ce.Reason}
				}
				b.ends <- end
				c.CloseNow()
				return
			}
			s := string(msg)
			switch {
			case typ == websocket.MessageText && strings.HasPrefix(s, "close "):
				f := strings.SplitN(s, " ", 3)
				code, _ := strconv.Atoi(f[1])
				c.Close(websocket.StatusCode(code), f[2])
				b.ends <- wsEnd{code: websocket.StatusCode(code), reason: "sent by backend"}
				return
			case typ == websocket.MessageText && s == "abort":
				c.CloseNow()
				b.ends <- wsEnd{code: -1, reason: "aborted by backend"}
				return
			case typ == websocket.MessageText && strings.HasPrefix(s, "header "):
				msg = []byte(r.Header.Get(strings.TrimPrefix(s, "header ")))
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				b.ends <- wsEnd{code: -1, reason: "write: " + err.Error()}
				c.CloseNow()
				return
			}
		}
	})
	b.Server = httptest.NewUnstartedServer(h)
	if configure != nil {
		configure(b.Config)
	}
	if tlsOn {
		b.StartTLS()
	} else {
		b.Start()
	}
	t.Cleanup(func() {
		b.mu.Lock()
		for c := range b.conns {
			c.CloseNow()
		}
		b.mu.Unlock()
		b.Server.Close()
	})
	return b
}

func (b *wsBackend) track(c *websocket.Conn, add bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

// end waits for the next connection end the backend saw.
func (b *wsBackend) end(t testing.TB, d time.Duration) wsEnd {
	t.Helper()
	select {
	case e := <-b.ends:
		return e
	case <-time.After(d):
		t.Fatalf("backend saw no connection end within %v", d)
		return wsEnd{}
	}
}

// wsURL turns an http(s):// test server URL into ws(s)://.
func wsURL(u string) string { return "ws" + strings.TrimPrefix(u, "http") }

// dialWS opens a WebSocket through front (a proxy test server).
func dialWS(t testing.TB, front *httptest.Server, path string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = front.Client()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, res, err := websocket.Dial(ctx, wsURL(front.URL)+path, opts)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	c.SetReadLimit(wsReadLimit)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// echoOnce sends typ/msg and checks the same comes back.
func echoOnce(t testing.TB, c *websocket.Conn, typ websocket.MessageType, msg []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	gt, got, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if gt != typ || string(got) != string(msg) {
		t.Fatalf("echo: got type %v, %d bytes; want type %v, %d bytes", gt, len(got), typ, len(msg))
	}
}

// ask sends a text message and returns the text answer.
func ask(t testing.TB, c *websocket.Conn, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_, got, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(got)
}

// readErr waits for c's next Read to fail and returns the error.
func readErr(t testing.TB, c *websocket.Conn, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("connection still open after %v", d)
			}
			return err
		}
	}
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}
