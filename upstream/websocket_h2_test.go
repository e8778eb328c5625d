package upstream

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	ws "github.com/gatehouse-proxy/gatehouse/websocket"
	// RFC 8441 in net/http's HTTP/2 server needs GODEBUG=http2xconnect=1
	// before net/http initialises; a //go:debug line cannot set it.
	_ "github.com/gatehouse-proxy/gatehouse/websocket/xconnect"
)

// newH2Front serves h over TLS with HTTP/2 enabled.
func newH2Front(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	front := httptest.NewUnstartedServer(h)
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	return front
}

func TestH2ServerAdvertisesExtendedConnect(t *testing.T) {
	t.Parallel()
	front := newH2Front(t, http.NotFoundHandler())
	cfg := front.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", front.Listener.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %T, want SETTINGS", f)
	}
	if v, ok := sf.Value(http2.SettingEnableConnectProtocol); !ok || v != 1 {
		t.Fatalf("SETTINGS_ENABLE_CONNECT_PROTOCOL = %d (sent %v); want 1", v, ok)
	}
}

// streamWS is a WebSocket client over an extended CONNECT stream, with
// hand-written framing (RFC 6455 §5): coder/websocket only dials HTTP/1.1.
type streamWS struct {
	res *http.Response
	w   *io.PipeWriter
}

// dialStream opens a WebSocket with an extended CONNECT through rt.
func dialStream(t testing.TB, rt http.RoundTripper, rawURL string, header http.Header) (*streamWS, *http.Response) {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, rawURL, pr)
	for k, v := range header {
		req.Header[k] = v
	}
	if _, ok := req.Header[":protocol"]; !ok {
		req.Header[":protocol"] = []string{"websocket"}
	}
	req.Header.Set("Sec-WebSocket-Version", "13")
	if _, ok := rt.(*http3.Transport); ok { // quic-go takes :protocol from Proto
		req.Proto = req.Header[":protocol"][0]
		delete(req.Header, ":protocol")
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	t.Cleanup(func() { pw.Close(); res.Body.Close() })
	return &streamWS{res: res, w: pw}, res
}

func (s *streamWS) send(t testing.TB, op byte, payload []byte) {
	t.Helper()
	hdr := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	frame := append(hdr, payload...)
	for i := range payload {
		frame[len(hdr)+i] ^= mask[i%4]
	}
	if _, err := s.w.Write(frame); err != nil {
		t.Fatalf("sending frame: %v", err)
	}
}

// recv reads one (unfragmented, unmasked) frame.
func (s *streamWS) recv() (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(s.res.Body, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(s.res.Body, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(s.res.Body, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(s.res.Body, p)
	return h[0] & 0x0f, p, err
}

func (s *streamWS) echo(t testing.TB, op byte, payload []byte) {
	t.Helper()
	s.send(t, op, payload)
	gop, got, err := s.recv()
	if err != nil || gop != op || string(got) != string(payload) {
		t.Fatalf("echo: op %d, %d bytes, %v; want op %d, %d bytes", gop, len(got), err, op, len(payload))
	}
}

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// expectClose reads until a close frame, checks its code, answers it (as
// RFC 6455 §5.5.1 asks; a backend waits for the answer before it closes)
// unless it answers a close we sent, then expects the stream to end.
func (s *streamWS) expectClose(t testing.TB, code uint16, answer bool) {
	t.Helper()
	for {
		op, p, err := s.recv()
		if err != nil {
			t.Fatalf("stream ended without a close frame: %v", err)
		}
		if op != 8 {
			continue
		}
		if len(p) < 2 || binary.BigEndian.Uint16(p) != code {
			t.Fatalf("close frame %q, want code %d", p, code)
		}
		if answer {
			s.send(t, 8, p[:2])
		}
		break
	}
	if _, _, err := s.recv(); err == nil {
		t.Fatal("stream goes on after the close frame")
	}
}

// h2Transport is an x/net/http2 client that trusts front.
func h2Transport(front *httptest.Server) *http2.Transport {
	return &http2.Transport{TLSClientConfig: front.Client().Transport.(*http.Transport).TLSClientConfig.Clone()}
}

func TestWebSocketOverH2(t *testing.T) {
	t.Parallel()
	backend := newWSBackend(t, false)
	pool := newTestPool(t, nil, backend.URL)
	tunnels := ws.NewRegistry()
	front := newH2Front(t, NewProxy(pool, Options{Logger: quietOptions().Logger, Tunnels: tunnels}))
	tr := h2Transport(front)
	t.Cleanup(tr.CloseIdleConnections)

	s, res := dialStream(t, tr, front.URL+"/chat", http.Header{"Sec-Websocket-Protocol": {"chat.v1"}})
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 2 {
		t.Fatalf("status %d over %s, want 200 over HTTP/2", res.StatusCode, res.Proto)
	}
	if p := res.Header.Get("Sec-WebSocket-Protocol"); p != "chat.v1" {
		t.Errorf("subprotocol %q", p)
	}
	if a := res.Header.Get("Sec-WebSocket-Accept"); a != "" {
		t.Errorf("Sec-WebSocket-Accept %q leaked into HTTP/2", a)
	}
	s.echo(t, 1, []byte("hello over h2"))
	s.echo(t, 2, []byte{0, 1, 2, 3})
	big := make([]byte, 1<<20)
	rand.Read(big)
	s.echo(t, 2, big) // beyond the initial flow-control windows
	for k, want := range map[string]string{"Via": "2.0 gatehouse", "X-Forwarded-Proto": "https", "Upgrade": "websocket"} {
		s.send(t, 1, []byte("header "+k))
		if _, got, _ := s.recv(); string(got) != want {
			t.Errorf("backend saw %s %q, want %q", k, got, want)
		}
	}
	s.send(t, 8, closePayload(4000, "h2 client bye"))
	if e := backend.end(t, 5*time.Second); e.code != 4000 || e.reason != "h2 client bye" {
		t.Errorf("backend saw %+v", e)
	}
	s.expectClose(t, 4000, false)
	waitFor(t, 5*time.Second, "tunnel gone", func() bool {
		return tunnels.Count() == 0 && pool.Backends[0].Inflight() == 0
	})

	// Backend-initiated close, on the same HTTP/2 connection.
	s, _ = dialStream(t, tr, front.URL+"/", nil)
	s.send(t, 1, []byte("close 4001 backend bye"))
	s.expectClose(t, 4001, true)

	// The client resets its stream: the backend connection is released.
	s, _ = dialStream(t, tr, front.URL+"/", nil)
	s.echo(t, 1, []byte("about to vanish"))
	s.res.Body.Close() // RST_STREAM
	if e := backend.end(t, 5*time.Second); e.code == 4001 {
		backend.end(t, 5*time.Second)
	}
	waitFor(t, 5*time.Second, "tunnels gone", func() bool {
		return tunnels.Count() == 0 && pool.Backends[0].Inflight() == 0
	})
}

func TestWebSocketOverH2IdleTimeout(t *testing.T) {
	t.Parallel()
	backend := newWSBackend(t, false)
	opts := quietOptions()
	opts.WebSocket.IdleTimeout = config.Duration(200 * time.Millisecond)
	front := newH2Front(t, NewProxy(newTestPool(t, nil, backend.URL), opts))
	s, _ := dialStream(t, h2Transport(front), front.URL+"/", nil)
	s.echo(t, 1, []byte("hi"))
	done := make(chan error, 1)
	go func() {
		_, _, err := s.recv()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("got a frame from an idle tunnel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("idle h2 tunnel not closed")
	}
	backend.end(t, 5*time.Second)
}

func TestExtendedConnectRefusals(t *testing.T) {
	t.Parallel()
	forbidding := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "no")
	}))
	t.Cleanup(forbidding.Close)
	front := newH2Front(t, NewProxy(newTestPool(t, nil, forbidding.URL), quietOptions()))
	tr := h2Transport(front)
	t.Cleanup(tr.CloseIdleConnections)

	_, res := dialStream(t, tr, front.URL+"/", http.Header{":protocol": {"connect-udp"}})
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("CONNECT :protocol connect-udp: status %d, want 400", res.StatusCode)
	}
	_, res = dialStream(t, tr, front.URL+"/", nil)
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusForbidden || string(body) != "no" {
		t.Errorf("backend's 403: got %d %q", res.StatusCode, body)
	}

	// A backend that ignores the upgrade and answers 200: over HTTP/2 a 2xx
	// would tell the client its tunnel is open, so the client gets 502.
	ignoring := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html>not a websocket</html>")
	}))
	t.Cleanup(ignoring.Close)
	front2 := newH2Front(t, NewProxy(newTestPool(t, nil, ignoring.URL), quietOptions()))
	tr2 := h2Transport(front2)
	t.Cleanup(tr2.CloseIdleConnections)
	_, res = dialStream(t, tr2, front2.URL+"/", nil)
	body, _ = io.ReadAll(res.Body)
	if res.StatusCode != http.StatusBadGateway || strings.Contains(string(body), "html") {
		t.Errorf("backend's 200 to a translated CONNECT: got %d %q, want 502", res.StatusCode, body)
	}
}

// HTTP/3 (RFC 9220): quic-go's server always advertises
// SETTINGS_ENABLE_CONNECT_PROTOCOL and hands extended CONNECT to the
// handler with r.Proto = "websocket"; the same translation serves it.
func TestWebSocketOverH3(t *testing.T) {
	t.Parallel()
	backend := newWSBackend(t, false)
	pool := newTestPool(t, nil, backend.URL)
	tunnels := ws.NewRegistry()
	h := NewProxy(pool, Options{Logger: quietOptions().Logger, Tunnels: tunnels})

	certs := httptest.NewUnstartedServer(nil) // only for its certificate
	certs.StartTLS()
	t.Cleanup(certs.Close)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	srv := &http3.Server{Handler: h, TLSConfig: http3.ConfigureTLSConfig(certs.TLS.Clone())}
	go srv.Serve(udp)
	t.Cleanup(func() { srv.Close() })
	tr := &http3.Transport{TLSClientConfig: certs.Client().Transport.(*http.Transport).TLSClientConfig.Clone()}
	t.Cleanup(func() { tr.Close() })

	s, res := dialStream(t, tr, "https://"+udp.LocalAddr().String()+"/chat", http.Header{"Sec-Websocket-Protocol": {"chat.v2"}})
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 3 {
		t.Fatalf("status %d over %s", res.StatusCode, res.Proto)
	}
	if p := res.Header.Get("Sec-WebSocket-Protocol"); p != "chat.v2" {
		t.Errorf("subprotocol %q", p)
	}
	s.echo(t, 1, []byte("hello over h3"))
	big := make([]byte, 256<<10)
	rand.Read(big)
	s.echo(t, 2, big)
	s.send(t, 1, []byte("header Via"))
	if _, got, _ := s.recv(); string(got) != "3.0 gatehouse" {
		t.Errorf("Via %q", got)
	}
	s.send(t, 8, closePayload(4000, "h3 bye"))
	if e := backend.end(t, 5*time.Second); e.code != 4000 {
		t.Errorf("backend saw %+v", e)
	}
	s.expectClose(t, 4000, false)
	waitFor(t, 5*time.Second, "tunnel gone", func() bool {
		return tunnels.Count() == 0 && pool.Backends[0].Inflight() == 0
	})
}
