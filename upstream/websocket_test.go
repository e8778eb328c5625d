package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	ws "github.com/gatehouse-proxy/gatehouse/websocket"
)

// wsRig is a gateway (NewProxy behind a real server) in front of a real
// WebSocket echo backend.
type wsRig struct {
	backend *wsBackend
	pool    *Pool
	tunnels *ws.Registry
	front   *httptest.Server
	logs    *logBuf
}

func newWSRig(t testing.TB, tlsOn bool, mod func(*Options)) *wsRig {
	t.Helper()
	r := &wsRig{backend: newWSBackend(t, tlsOn), tunnels: ws.NewRegistry()}
	r.pool = newTestPool(t, func(u *config.Upstream) { u.TLS.InsecureSkipVerify = true }, r.backend.URL)
	log, lb := testLogger()
	r.logs = lb
	opts := Options{Logger: log, Tunnels: r.tunnels, RouteKey: "test/"}
	if mod != nil {
		mod(&opts)
	}
	h := NewProxy(r.pool, opts)
	if tlsOn {
		r.front = httptest.NewTLSServer(h)
	} else {
		r.front = httptest.NewServer(h)
	}
	t.Cleanup(r.front.Close)
	return r
}

// idle waits until no tunnel is open and the backend's in-flight count is 0.
func (r *wsRig) idle(t testing.TB) {
	t.Helper()
	waitFor(t, 5*time.Second, "tunnels to close", func() bool {
		return r.tunnels.Count() == 0 && r.pool.Backends[0].Inflight() == 0
	})
}

func TestWebSocketEcho(t *testing.T) {
	t.Parallel()
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			t.Parallel()
			r := newWSRig(t, tlsOn, nil)
			c := dialWS(t, r.front, "/chat?room=1", &websocket.DialOptions{
				Subprotocols: []string{"chat.v1"},
				HTTPHeader:   http.Header{"X-Client": {"yes"}},
			})
			if p := c.Subprotocol(); p != "chat.v1" {
				t.Errorf("subprotocol %q, want chat.v1", p)
			}
			echoOnce(t, c, websocket.MessageText, []byte("hello, gatehouse"))
			echoOnce(t, c, websocket.MessageBinary, []byte{0, 1, 2, 0xff, 0xfe})
			big := make([]byte, 16<<20)
			rand.Read(big)
			echoOnce(t, c, websocket.MessageBinary, big)
			for k, want := range map[string]string{
				"X-Client":               "yes",
				"Via":                    "1.1 gatehouse",
				"X-Forwarded-For":        "127.0.0.1",
				"Sec-WebSocket-Protocol": "chat.v1",
			} {
				if got := ask(t, c, "header "+k); got != want {
					t.Errorf("backend saw %s %q, want %q", k, got, want)
				}
			}
			proto := "http"
			if tlsOn {
				proto = "https"
			}
			if got := ask(t, c, "header X-Forwarded-Proto"); got != proto {
				t.Errorf("X-Forwarded-Proto %q, want %q", got, proto)
			}
			if n := r.pool.Backends[0].Inflight(); n != 1 {
				t.Errorf("inflight %d during the tunnel, want 1", n)
			}
			c.Close(websocket.StatusNormalClosure, "done")
			if e := r.backend.end(t, 5*time.Second); e.code != websocket.StatusNormalClosure {
				t.Errorf("backend saw %+v", e)
			}
			r.idle(t)
			waitFor(t, 5*time.Second, "the tunnel's log line", func() bool {
				logs := r.logs.String()
				// The backend ends the TCP connection first (RFC 6455 §7.1.1).
				return strings.Contains(logs, `"msg":"websocket closed"`) && strings.Contains(logs, `"reason":"backend_closed"`)
			})
		})
	}
}

func TestWebSocketPing(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, nil)
	c := dialWS(t, r.front, "/", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go c.Read(ctx) // a reader must run for the pong to be seen
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func TestWebSocketCloseCodes(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, nil)

	// Client → backend.
	c := dialWS(t, r.front, "/", nil)
	echoOnce(t, c, websocket.MessageText, []byte("hi"))
	if err := c.Close(4000, "client says bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	if e := r.backend.end(t, 5*time.Second); e.code != 4000 || e.reason != "client says bye" {
		t.Errorf("backend saw %+v, want 4000 client says bye", e)
	}

	// Backend → client.
	c = dialWS(t, r.front, "/", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Write(ctx, websocket.MessageText, []byte("close 4001 backend says bye"))
	err := readErr(t, c, 5*time.Second)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "backend says bye" {
		t.Errorf("client got %v, want close 4001 backend says bye", err)
	}
	r.idle(t)
}

func TestWebSocketBackendAbortReachesClient(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, nil)
	c := dialWS(t, r.front, "/", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Write(ctx, websocket.MessageText, []byte("abort"))
	err := readErr(t, c, 3*time.Second)
	if websocket.CloseStatus(err) != -1 {
		t.Errorf("client got a close frame (%v); the backend sent none", err)
	}
	r.idle(t)
}

// A client that vanishes without a close frame releases the backend
// connection: the backend sees EOF, the tunnel and in-flight count go.
func TestWebSocketClientVanishes(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, nil)
	c := dialWS(t, r.front, "/", nil)
	echoOnce(t, c, websocket.MessageText, []byte("hi"))
	c.CloseNow() // TCP close, no close frame
	if e := r.backend.end(t, 3*time.Second); e.code != -1 {
		t.Errorf("backend saw %+v, want EOF", e)
	}
	r.idle(t)
}

func TestWebSocketIdleTimeout(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, func(o *Options) { o.WebSocket.IdleTimeout = config.Duration(200 * time.Millisecond) })
	c := dialWS(t, r.front, "/", nil)
	echoOnce(t, c, websocket.MessageText, []byte("hi"))
	readErr(t, c, 5*time.Second)
	r.backend.end(t, 5*time.Second)
	r.idle(t)
	waitFor(t, 5*time.Second, "the tunnel's log line", func() bool {
		return strings.Contains(r.logs.String(), `"reason":"idle_timeout"`)
	})
}

func TestWebSocketTunnelLimit(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, func(o *Options) { o.WebSocket.MaxTunnels = 1 })
	c := dialWS(t, r.front, "/", nil)
	echoOnce(t, c, websocket.MessageText, []byte("first"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, res, err := websocket.Dial(ctx, wsURL(r.front.URL), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second tunnel: err %v, response %v; want 503", err, res)
	}
	if res.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if n := r.backend.handshakes.Load(); n != 1 {
		t.Errorf("backend saw %d handshakes; the refused one must not reach it", n)
	}
	c.Close(websocket.StatusNormalClosure, "")
	r.idle(t)
	echoOnce(t, dialWS(t, r.front, "/", nil), websocket.MessageText, []byte("slot free again"))
}

func TestWebSocketRegistryCloseAll(t *testing.T) {
	t.Parallel()
	r := newWSRig(t, false, nil)
	var conns []*websocket.Conn
	for range 5 {
		c := dialWS(t, r.front, "/", nil)
		echoOnce(t, c, websocket.MessageText, []byte("hi"))
		conns = append(conns, c)
	}
	if n := r.tunnels.CloseAll(); n != 5 {
		t.Fatalf("CloseAll closed %d, want 5", n)
	}
	for _, c := range conns {
		readErr(t, c, 3*time.Second)
		r.backend.end(t, 3*time.Second)
	}
	r.idle(t)
}

// The backend's answer other than 101 reaches the client as is.
func TestWebSocketNon101Relayed(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Why", "no ticket")
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "forbidden here")
	}))
	t.Cleanup(backend.Close)
	pool := newTestPool(t, nil, backend.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	req, _ := http.NewRequest(http.MethodGet, front.URL+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", ws.NewKey())
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || string(body) != "forbidden here" || res.Header.Get("X-Why") != "no ticket" {
		t.Errorf("got %d %q %v", res.StatusCode, body, res.Header)
	}
	if res.Header.Get("Via") != "1.1 gatehouse" {
		t.Errorf("Via %q", res.Header.Get("Via"))
	}
	waitFor(t, 5*time.Second, "inflight 0", func() bool { return pool.Backends[0].Inflight() == 0 })
}

// A 101 to another protocol than the one asked for is a 502.
func TestWebSocketWrongProtocol502(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, conn)
	}))
	t.Cleanup(backend.Close)
	pool := newTestPool(t, nil, backend.URL)
	tunnels := ws.NewRegistry()
	front := serveProxy(t, NewProxy(pool, Options{Logger: quietOptions().Logger, Tunnels: tunnels}))
	_, res, err := websocket.Dial(context.Background(), wsURL(front.URL), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("err %v, response %v; want 502", err, res)
	}
	waitFor(t, 5*time.Second, "inflight 0", func() bool {
		return pool.Backends[0].Inflight() == 0 && tunnels.Count() == 0
	})
}

// Unreachable backend: 502 before any upgrade; with a second backend up,
// the handshake fails over to it.
func TestWebSocketBackendUnreachable(t *testing.T) {
	t.Parallel()
	dead := "http://" + deadAddr(t)
	front := serveProxy(t, NewProxy(newTestPool(t, nil, dead), quietOptions()))
	_, res, err := websocket.Dial(context.Background(), wsURL(front.URL), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("err %v, response %v; want 502", err, res)
	}

	backend := newWSBackend(t, false)
	pool := newTestPool(t, nil, dead, backend.URL)
	front = serveProxy(t, NewProxy(pool, quietOptions()))
	for range 2 { // whichever backend the balancer starts with
		c := dialWS(t, front, "/", nil)
		echoOnce(t, c, websocket.MessageText, []byte("failed over"))
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// An h2c backend gets the handshake over HTTP/1.1 on the same address.
func TestWebSocketH2CBackend(t *testing.T) {
	t.Parallel()
	backend := newWSBackendWith(t, false, func(s *http.Server) {
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		s.Protocols = &protos
	})
	pool := newTestPool(t, nil, strings.Replace(backend.URL, "http://", "h2c://", 1))
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	c := dialWS(t, front, "/", nil)
	echoOnce(t, c, websocket.MessageText, []byte("over h2c's address"))
}

// The handler writes 101 and returns right after the handshake; the tunnel
// goes on without it.
func TestWebSocketHandlerReturnsAfter101(t *testing.T) {
	t.Parallel()
	backend := newWSBackend(t, false)
	h := NewProxy(newTestPool(t, nil, backend.URL), quietOptions())
	statuses := make(chan int, 1)
	front := serveProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &codeRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		statuses <- rec.code
	}))
	c := dialWS(t, front, "/", nil)
	select {
	case code := <-statuses:
		if code != http.StatusSwitchingProtocols {
			t.Errorf("handler wrote %d, want 101", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler still running after the handshake")
	}
	echoOnce(t, c, websocket.MessageText, []byte("tunnel outlives the handler"))
	c.Close(websocket.StatusNormalClosure, "")
}

// codeRecorder remembers the first status written, 101 included.
type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeRecorder) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Bytes the client sends right behind its handshake (before the 101) are
// not lost in the server's read buffer.
func TestWebSocketEarlyClientBytes(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Sec-WebSocket-Accept", ws.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo: " + line)
		brw.Flush()
	}))
	t.Cleanup(backend.Close)
	front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\nearly bytes\n", ws.NewKey())
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", res, err)
	}
	line, err := br.ReadString('\n')
	if line != "echo: early bytes\n" {
		t.Errorf("got %q, %v", line, err)
	}
}

func TestWebSocketManyConcurrent(t *testing.T) {
	t.Parallel()
	const n = 200
	r := newWSRig(t, false, nil)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialWS(t, r.front, "/", nil)
			for j := range 5 {
				echoOnce(t, c, websocket.MessageText, []byte(fmt.Sprintf("conn %d message %d", i, j)))
			}
			c.Close(websocket.StatusNormalClosure, "")
		}()
	}
	wg.Wait()
	r.idle(t)
}

// TestWebSocketGoroutinesReturnToBaseline opens tunnels that end in every
// way and checks that no goroutine outlives them. Not parallel: it counts
// the whole process's goroutines.
func TestWebSocketGoroutinesReturnToBaseline(t *testing.T) {
	r := newWSRig(t, false, func(o *Options) { o.WebSocket.IdleTimeout = config.Duration(300 * time.Millisecond) })
	warm := dialWS(t, r.front, "/", nil) // let lazily started goroutines start
	echoOnce(t, warm, websocket.MessageText, []byte("warm"))
	warm.Close(websocket.StatusNormalClosure, "")
	r.backend.end(t, 5*time.Second)
	r.idle(t)
	r.front.Client().CloseIdleConnections()
	base := runtime.NumGoroutine()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 20 {
		c := dialWS(t, r.front, "/", nil)
		echoOnce(t, c, websocket.MessageBinary, bytes.Repeat([]byte{byte(i)}, 100<<10))
		switch i % 5 {
		case 0:
			c.Close(websocket.StatusNormalClosure, "")
		case 1:
			c.CloseNow()
		case 2:
			c.Write(ctx, websocket.MessageText, []byte("abort"))
		case 3: // idle timeout
		case 4:
			c.Write(ctx, websocket.MessageText, []byte("close 4002 bye"))
		}
		if i%5 != 0 && i%5 != 1 {
			readErr(t, c, 5*time.Second)
		}
		c.CloseNow()
		r.backend.end(t, 5*time.Second)
	}
	r.idle(t)
	r.front.Client().CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

// TestWebSocketBufferBoundaries echoes messages whose frames exactly fill the
// tunnel's small (512 B) and big (16 KiB) read buffers, and one byte either
// side: a read that exactly fills a buffer must be forwarded at once, not
// held until more bytes arrive. Client frames carry an 8-byte header (masked,
// short length) and server frames 4, so both directions hit 512 exactly.
func TestWebSocketBufferBoundaries(t *testing.T) {
	t.Parallel()
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			t.Parallel()
			r := newWSRig(t, tlsOn, nil)
			c := dialWS(t, r.front, "/edges", nil)
			for _, n := range []int{503, 504, 505, 507, 508, 509, 511, 512, 513, 16<<10 - 8, 16<<10 - 4, 16 << 10, 16<<10 + 1, 32 << 10} {
				msg := make([]byte, n)
				rand.Read(msg)
				echoOnce(t, c, websocket.MessageBinary, msg)
			}
		})
	}
}

// TestWebSocketHandshakeChecks: a request without a proper key or version
// is no WebSocket handshake, and a backend's 101 must carry the accept value
// for the client's key — otherwise a backend endpoint that answers 101
// without speaking WebSocket would become a raw pipe to the backend.
func TestWebSocketHandshakeChecks(t *testing.T) {
	t.Parallel()
	var fakeHits atomic.Int32
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fakeHits.Add(1)
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols) // no Sec-WebSocket-Accept
	}))
	t.Cleanup(fake.Close)
	front := httptest.NewServer(NewProxy(newTestPool(t, nil, fake.URL), quietOptions()))
	t.Cleanup(front.Close)
	tests := []struct {
		name, key, version string
		status             int
		reachesBackend     bool
	}{
		{"no key", "", "13", http.StatusBadRequest, false},
		{"short key", "c2hvcnQ=", "13", http.StatusBadRequest, false},
		{"old version", "dGhlIHNhbXBsZSBub25jZQ==", "8", http.StatusUpgradeRequired, false},
		{"fake 101 from the backend", "dGhlIHNhbXBsZSBub25jZQ==", "13", http.StatusBadGateway, true},
	}
	for _, tt := range tests {
		before := fakeHits.Load()
		req, _ := http.NewRequest("GET", front.URL+"/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", tt.version)
		if tt.key != "" {
			req.Header.Set("Sec-WebSocket-Key", tt.key)
		}
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		res.Body.Close()
		if res.StatusCode != tt.status {
			t.Errorf("%s: status %d, want %d", tt.name, res.StatusCode, tt.status)
		}
		if reached := fakeHits.Load() > before; reached != tt.reachesBackend {
			t.Errorf("%s: reached the backend = %v, want %v", tt.name, reached, tt.reachesBackend)
		}
	}
}
