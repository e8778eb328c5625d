package integration

// Peers and probes for the WebSocket tests: an echo backend built on
// github.com/coder/websocket, a gateway with the same routes on a tls: off
// site (ws://) and a tls: internal site (wss://), a minimal RFC 6455 frame
// codec for the raw and HTTP/2 tests, and /proc probes of the gateway's
// sockets and threads.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsReadLimit is the read limit both ends set: above the 16 MiB message.
const wsReadLimit = 32 << 20

// ---------------------------------------------------------------- backend

// wsBackend is a WebSocket echo server. What a connection does depends on
// the query parameter mode of its upgrade request:
//
//	(none)      echo every message; the text "close-me" makes the server
//	            close with 4001 "server says bye"; "ping-me" makes it ping
//	            the client (result on the record's Pings).
//	fin         read one message, then drop the TCP connection (CloseNow).
//	rst, halfclose, halfclose-backend, ignore-eof
//	            a hand-written handshake on a hijacked connection (serveRaw).
//	status      answer 403 with a body and a header instead of upgrading.
//	wrongproto  answer 101 with "Upgrade: h2c" to a websocket request.
//
// The server offers the subprotocol chat.v1 only.
type wsBackend struct {
	t   testing.TB
	srv *httptest.Server
	URL string // http://127.0.0.1:PORT

	Requests atomic.Int64 // requests that reached the handler
	Active   atomic.Int64 // WebSocket connections being served

	mu   sync.Mutex
	byID map[string]*wsRecord // by the query parameter id
}

// wsRecord is what the backend saw of the connection with one id.
type wsRecord struct {
	Header http.Header
	Host   string
	End    error // final Read error (echo connections)
	Ended  chan struct{}
	Pings  chan error  // results of the server's pings ("ping-me")
	Got    chan string // what a raw mode received (halfclose-backend)
}

func newWSBackend(t testing.TB) *wsBackend {
	t.Helper()
	b := &wsBackend{t: t, byID: map[string]*wsRecord{}}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	b.URL = b.srv.URL
	t.Cleanup(b.srv.Close)
	return b
}

func (b *wsBackend) serve(w http.ResponseWriter, r *http.Request) {
	b.Requests.Add(1)
	rec := &wsRecord{Header: r.Header.Clone(), Host: r.Host, Ended: make(chan struct{}),
		Pings: make(chan error, 16), Got: make(chan string, 1)}
	defer close(rec.Ended)
	b.mu.Lock()
	if id := r.URL.Query().Get("id"); id != "" {
		b.byID[id] = rec
	}
	b.mu.Unlock()

	switch r.URL.Query().Get("mode") {
	case "status":
		w.Header().Set("X-Backend-Said", "no")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "backend refuses this upgrade\n")
		return
	case "wrongproto":
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		brw.Flush()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, conn)
		return
	case "rst", "halfclose", "halfclose-backend", "ignore-eof":
		b.serveRaw(w, r, rec)
		return
	}

	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:   []string{"chat.v1"},
		OriginPatterns: []string{"localhost:*", "127.0.0.1:*"},
	})
	if err != nil {
		return
	}
	b.Active.Add(1)
	defer b.Active.Add(-1)
	c.SetReadLimit(wsReadLimit)
	ctx := context.Background()

	if r.URL.Query().Get("mode") == "fin" {
		c.Read(ctx)
		c.CloseNow()
		return
	}
	defer c.CloseNow()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			b.mu.Lock()
			rec.End = err
			b.mu.Unlock()
			return
		}
		switch {
		case typ == websocket.MessageText && string(data) == "close-me":
			c.Close(4001, "server says bye")
			return
		case typ == websocket.MessageText && string(data) == "ping-me":
			go func() {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				rec.Pings <- c.Ping(pctx)
			}()
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err = c.Write(wctx, typ, data)
		cancel()
		if err != nil {
			return
		}
	}
}

// serveRaw completes the handshake by hand on the hijacked connection and
// then, by mode:
//
//	rst                after one frame from the client, resets the TCP
//	                   connection.
//	halfclose          reads frames until EOF, answers with the text
//	                   "N frames, then EOF", and closes.
//	halfclose-backend  sends the text "server done", half-closes, reads one
//	                   frame (its payload goes to the record's Got), closes.
//	ignore-eof         reads until EOF and keeps the connection open 5s.
func (b *wsBackend) serveRaw(w http.ResponseWriter, r *http.Request, rec *wsRecord) {
	key := r.Header.Get("Sec-WebSocket-Key")
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	b.Active.Add(1)
	defer b.Active.Add(-1)
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n\r\n", wsAccept(key))
	brw.Flush()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	switch r.URL.Query().Get("mode") {
	case "rst":
		wsReadFrame(brw.Reader)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	case "halfclose":
		n := 0
		var err error
		for {
			if _, _, _, err = wsReadFrame(brw.Reader); err != nil {
				break
			}
			n++
		}
		if errors.Is(err, io.EOF) {
			conn.Write(wsFrame(opText, []byte(fmt.Sprintf("%d frames, then EOF", n)), false))
		}
	case "halfclose-backend":
		conn.Write(wsFrame(opText, []byte("server done"), false))
		conn.(*net.TCPConn).CloseWrite()
		_, _, payload, err := wsReadFrame(brw.Reader)
		if err != nil {
			payload = []byte("error: " + err.Error())
		}
		rec.Got <- string(payload)
	case "ignore-eof":
		io.Copy(io.Discard, brw.Reader)
		time.Sleep(5 * time.Second)
	}
}

// Record waits up to d for the connection with the given id to have reached
// the backend.
func (b *wsBackend) Record(t testing.TB, id string, d time.Duration) *wsRecord {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b.mu.Lock()
		rec := b.byID[id]
		b.mu.Unlock()
		if rec != nil {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend: no request with id %s within %v", id, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitEnd waits up to d for the backend's handler of id to return and gives
// the final Read error of an echo connection.
func (b *wsBackend) waitEnd(t testing.TB, id string, d time.Duration) (error, time.Duration) {
	t.Helper()
	rec := b.Record(t, id, d)
	start := time.Now()
	select {
	case <-rec.Ended:
		b.mu.Lock()
		defer b.mu.Unlock()
		return rec.End, time.Since(start)
	case <-time.After(d):
		t.Fatalf("backend: connection %s still open %v later", id, d)
		return nil, 0
	}
}

// waitActive polls until the backend serves exactly n connections.
func (b *wsBackend) waitActive(t testing.TB, n int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := b.Active.Load()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend serves %d WebSocket connections %v later, want %d", got, d, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- gateway

// wsGateway is a gateway whose tls: off site (hosts 127.0.0.1 and ws.test)
// and tls: internal site (localhost) share the same routes.
type wsGateway struct {
	*Gateway
	t     testing.TB
	Roots *x509.CertPool // the internal CA's root, once served
}

// wsRoute renders one proxied route; ws is the inline websocket: value or "".
func wsRoute(path, upstream, ws string) string {
	s := fmt.Sprintf("      - path: %s\n        upstream: [%s]\n", path, upstream)
	if ws != "" {
		s += "        websocket: " + ws + "\n"
	}
	return s
}

// startWSGateway starts a gateway with routes (rendered by wsRoute) on a
// plain and, if withTLS, an internal-CA site; with TLS it waits until the
// root certificate exists and a verified handshake for localhost succeeds.
func startWSGateway(t testing.TB, global, routes string, withTLS bool) *wsGateway {
	t.Helper()
	body := "sites:\n  - hosts: [127.0.0.1, ws.test]\n    tls: off\n    routes:\n" + routes
	if withTLS {
		body += "  - hosts: [localhost]\n    tls: internal\n    routes:\n" + routes
	}
	g := &wsGateway{t: t, Gateway: startGateway(t, GatewayConfig{Global: global, Body: body})}
	if withTLS {
		g.Roots = waitInternalRoot(t, g.Proc, g.DataDir, g.HTTPSAddr())
	}
	// Registered after startGateway, so it runs while the gateway still runs
	// and after the clients' own cleanups: every tunnel of the test has ended
	// by then, so the gateway must hold no TCP connection any more.
	t.Cleanup(func() {
		if !t.Failed() && !g.Exited() {
			waitNoConns(t, g.Proc, 5*time.Second, g.HTTPPort, g.HTTPSPort)
		}
	})
	return g
}

// waitNoConns polls until the gateway holds no connection a finished
// tunnel could have left behind, failing after d: no client connection on
// its ports (ESTABLISHED or CLOSE_WAIT alike: the clients have all closed),
// and no backend connection other than ESTABLISHED ones (idle keep-alive
// connections of normal requests may stay pooled; a tunnel whose backend
// closed would sit in CLOSE_WAIT).
func waitNoConns(t testing.TB, p *Proc, d time.Duration, ports ...int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r := gatewaySockets(t, p.Pid())
		var left []tcpSock
		for _, s := range r.TCP {
			if s.State == "LISTEN" {
				continue
			}
			if slices.Contains(ports, s.LocalPort) || s.State != "ESTABLISHED" {
				left = append(left, s)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: %v after the test's tunnels ended, the gateway still holds %+v (all: %v)", d, left, r)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawConn opens a TCP connection to the gateway's ws:// port, or a TLS
// connection (HTTP/1.1, SNI localhost) to its wss:// port.
func (g *wsGateway) rawConn(t testing.TB, secure bool) net.Conn {
	t.Helper()
	addr := g.Addr
	if secure {
		addr = g.HTTPSAddr()
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	if secure {
		tc := tls.Client(c, &tls.Config{ServerName: "localhost", RootCAs: g.Roots, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			t.Fatalf("TLS handshake with %s: %v", addr, err)
		}
		c = tc
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// HTTPSAddr is 127.0.0.1:https_port.
func (g *wsGateway) HTTPSAddr() string { return fmt.Sprintf("127.0.0.1:%d", g.HTTPSPort) }

// waitInternalRoot polls for <dataDir>/pki/root.crt and a handshake for
// localhost on addr that verifies with it.
func waitInternalRoot(t testing.TB, p *Proc, dataDir, addr string) *x509.CertPool {
	t.Helper()
	rootPath := filepath.Join(dataDir, "pki", "root.crt")
	deadline := time.Now().Add(certWait)
	for {
		var err error
		pool := x509.NewCertPool()
		if pem, rerr := os.ReadFile(rootPath); rerr != nil {
			err = rerr
		} else if !pool.AppendCertsFromPEM(pem) {
			err = fmt.Errorf("%s holds no PEM certificate", rootPath)
		} else if _, err = handshake(addr, "localhost", pool, 5*time.Second); err == nil {
			return pool
		}
		if p.Exited() {
			t.Fatalf("gateway exited (code %d) before serving HTTPS: %v", p.Cmd.ProcessState.ExitCode(), err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verified handshake for localhost on %s within %v: %v", addr, certWait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wsTarget is one way to reach the gateway's /ws routes.
type wsTarget struct {
	Name   string // "ws" or "wss"
	Base   string // ws://127.0.0.1:PORT or wss://localhost:PORT
	Client *http.Client
	dialed *connLog
}

// connLog records the TCP connections a client dialed; with keep-alives
// off, the last one carries the last request.
type connLog struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connLog) add(c net.Conn) {
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
}

// Last is the most recently dialed connection.
func (l *connLog) Last() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) == 0 {
		return nil
	}
	return l.conns[len(l.conns)-1]
}

// Plain is the ws:// target on http_port.
func (g *wsGateway) Plain() wsTarget {
	log := &connLog{}
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				log.add(c)
			}
			return c, err
		},
		DisableCompression: true,
		// One connection per request (upgrades leave the pool anyway), so
		// that the last dialed connection is the last request's.
		DisableKeepAlives: true,
	}
	g.t.Cleanup(tr.CloseIdleConnections)
	return wsTarget{Name: "ws", Base: "ws://" + g.Addr, Client: &http.Client{Transport: tr}, dialed: log}
}

// TLS is the wss:// target on https_port (HTTP/1.1 only, as RFC 6455 needs).
func (g *wsGateway) TLS() wsTarget {
	if g.Roots == nil {
		g.t.Fatal("TLS target asked of a gateway started without TLS")
	}
	log := &connLog{}
	tr := tlsTransport(g.HTTPSPort, "localhost", g.Roots, false)
	tr.DisableKeepAlives = true
	inner := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := inner(ctx, network, addr)
		if err == nil {
			log.add(c)
		}
		return c, err
	}
	g.t.Cleanup(tr.CloseIdleConnections)
	return wsTarget{Name: "wss", Base: fmt.Sprintf("wss://localhost:%d", g.HTTPSPort), Client: &http.Client{Transport: tr}, dialed: log}
}

// Targets is Plain, plus TLS when the gateway serves it.
func (g *wsGateway) Targets() []wsTarget {
	ts := []wsTarget{g.Plain()}
	if g.Roots != nil {
		ts = append(ts, g.TLS())
	}
	return ts
}

// dial opens a WebSocket to target.Base+path, failing the test on error.
func (tg wsTarget) dial(t testing.TB, ctx context.Context, path string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response) {
	t.Helper()
	c, resp, err := tg.tryDial(ctx, path, opts)
	if err != nil {
		status := "no response"
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("%s: dialing %s%s through the gateway: %v (%s)", tg.Name, tg.Base, path, err, status)
	}
	return c, resp
}

func (tg wsTarget) tryDial(ctx context.Context, path string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response, error) {
	var o websocket.DialOptions
	if opts != nil {
		o = *opts
	}
	o.HTTPClient = tg.Client
	c, resp, err := websocket.Dial(ctx, tg.Base+path, &o)
	if err == nil {
		c.SetReadLimit(wsReadLimit)
	}
	return c, resp, err
}

// ---------------------------------------------------------------- raw frames

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsAccept is the Sec-WebSocket-Accept value for key.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsKey returns a fresh Sec-WebSocket-Key.
func wsKey() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// WebSocket opcodes.
const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

// wsFrame encodes one final frame; client frames are masked (RFC 6455 5.3).
func wsFrame(op byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | op}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xFFFF:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	var key [4]byte
	rand.Read(key[:])
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// wsClosePayload is a close frame's payload.
func wsClosePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// wsReadFrame reads one frame, unmasking it if needed.
func wsReadFrame(r io.Reader) (fin bool, op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	fin, op = h[0]&0x80 != 0, h[0]&0x0F
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var l [2]byte
		if _, err = io.ReadFull(r, l[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err = io.ReadFull(r, l[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > wsReadLimit {
		err = fmt.Errorf("frame of %d bytes", n)
		return
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err = io.ReadFull(r, key[:]); err != nil {
			return
		}
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return
}

// rawUpgrade sends a hand-written upgrade request on conn and reads the
// response, returning the reader positioned after it.
func rawUpgrade(conn net.Conn, host, path string, extra string) (*http.Response, *bufio.Reader, string, error) {
	key := wsKey()
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
		path, host, key, extra)
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, nil, key, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	return resp, br, key, err
}

// ---------------------------------------------------------------- /proc probes

// procSockets returns the socket inodes among pid's open files.
func procSockets(pid int) (map[string]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return inodes, nil
}

var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
	"06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// socketReport counts pid's sockets and describes their TCP states.
type socketReport struct {
	Total       int            // socket file descriptors
	Established int            // of which TCP ESTABLISHED
	States      map[string]int // TCP state -> count (sockets not in /proc/net/tcp* are "other")
	TCP         []tcpSock
}

// tcpSock is one TCP socket of the process.
type tcpSock struct {
	LocalPort, RemotePort int
	State                 string
}

func (r socketReport) String() string {
	keys := make([]string, 0, len(r.States))
	for k := range r.States {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.States[k]))
	}
	return fmt.Sprintf("%d sockets (%s)", r.Total, strings.Join(parts, " "))
}

// gatewaySockets reports the socket file descriptors of pid.
func gatewaySockets(t testing.TB, pid int) socketReport {
	t.Helper()
	inodes, err := procSockets(pid)
	if err != nil {
		t.Fatalf("listing the gateway's file descriptors: %v", err)
	}
	r := socketReport{Total: len(inodes), States: map[string]int{}}
	seen := 0
	for _, f := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if i == 0 || len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			st := tcpStates[fields[3]]
			if st == "" {
				st = fields[3]
			}
			r.TCP = append(r.TCP, tcpSock{LocalPort: hexPort(fields[1]), RemotePort: hexPort(fields[2]), State: st})
			r.States[st]++
			seen++
			if st == "ESTABLISHED" {
				r.Established++
			}
		}
	}
	if other := r.Total - seen; other > 0 {
		r.States["other"] = other
	}
	return r
}

// hexPort parses the port of a /proc/net/tcp address ("0100007F:1F90").
func hexPort(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseUint(p, 16, 16)
	return int(n)
}

// procThreads is the Threads: line of /proc/PID/status.
func procThreads(t testing.TB, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading /proc status: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				t.Fatalf("parsing %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no Threads line in /proc/%d/status", pid)
	return 0
}

// raiseNoFile lifts this process's soft RLIMIT_NOFILE to the hard limit and
// fails the test if fewer than need descriptors are allowed. Gateways
// started afterwards inherit the limit.
func raiseNoFile(t testing.TB, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	// Always set it: Go raised the soft limit of this process at start but
	// gives child processes the original one unless the program itself
	// called Setrlimit.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raising RLIMIT_NOFILE to %d: %v", lim.Max, err)
	}
	if lim.Cur < need {
		t.Fatalf("RLIMIT_NOFILE is %d, this test needs about %d open files", lim.Cur, need)
	}
}

// readErr reads from c until an error, within d; it fails the test if a
// message arrives that is not expected, or if no error came in time. It
// returns the error and how long it took.
func readErr(t testing.TB, c *websocket.Conn, d time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("connection still open %v later (the read only stopped at the test's deadline): %v", d, err)
			}
			return err, time.Since(start)
		}
		t.Fatalf("unexpected %v message %q while waiting for the connection to end", typ, truncate(data))
	}
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// closeStatus is websocket.CloseStatus with the reason.
func closeStatus(err error) (websocket.StatusCode, string) {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, ""
}

// tlsH2Conn dials addr with ALPN h2 only, verifying localhost against roots.
func tlsH2Conn(t testing.TB, addr string, roots *x509.CertPool) *tls.Conn {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{ServerName: "localhost", RootCAs: roots, NextProtos: []string{"h2"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("TLS dial %s with ALPN h2: %v", addr, err)
	}
	tc := c.(*tls.Conn)
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		t.Fatalf("ALPN negotiated %q, want h2", p)
	}
	t.Cleanup(func() { tc.Close() })
	return tc
}
