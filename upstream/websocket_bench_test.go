package upstream

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/coder/websocket"

	ws "github.com/gatehouse-proxy/gatehouse/websocket"
)

// BenchmarkWebSocketEcho measures a 4 KiB binary message's round trip
// through the gateway to an echo backend (coder/websocket on both sides).
func BenchmarkWebSocketEcho(b *testing.B) {
	r := newWSRig(b, false, nil)
	c := dialWS(b, r.front, "/", nil)
	msg := make([]byte, 4<<10)
	b.SetBytes(int64(2 * len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		echoOnce(b, c, websocket.MessageBinary, msg)
	}
}

// BenchmarkIdleWebSocketMemory holds 1,000 idle WebSocket tunnels through
// NewProxy behind a real HTTP/1.1 server and reports the heap and goroutine
// stack they add per tunnel. Clients and backend are raw peers that hold
// their connections without a goroutine each, so the figure is the
// gateway's plus one net.Conn for each peer (a few hundred bytes; over TLS
// the client's tls.Conn too, about as much as the gateway's own). Run with
// -benchtime=1x.
func BenchmarkIdleWebSocketMemory(b *testing.B) {
	b.Run("http", func(b *testing.B) { benchIdleMemory(b, false) })
	b.Run("https", func(b *testing.B) { benchIdleMemory(b, true) })
}

func benchIdleMemory(b *testing.B, tlsOn bool) {
	const n = 1000
	backend := newRawWSBackend(b)
	tunnels := ws.NewRegistry()
	h := NewProxy(newTestPool(b, nil, "http://"+backend.addr), Options{
		Logger: quietOptions().Logger, Tunnels: tunnels,
	})
	var front *httptest.Server
	var tlsCfg *tls.Config
	if tlsOn {
		front = httptest.NewTLSServer(h)
		tlsCfg = front.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		tlsCfg.ServerName = "example.com" // in httptest's certificate
	} else {
		front = httptest.NewServer(h)
	}
	b.Cleanup(front.Close)
	addr := front.Listener.Addr().String()
	var heap, stack, gor float64
	for b.Loop() {
		before, g0 := memUse(), runtime.NumGoroutine()
		clients := make([]net.Conn, 0, n)
		for range n {
			clients = append(clients, rawWSDial(b, addr, tlsCfg))
		}
		// One byte each way through every tunnel: all are established
		// and back in their idle Read.
		for _, c := range clients {
			c.Write([]byte{'x'})
		}
		backend.echoOnce(b, n)
		for _, c := range clients {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
		}
		after, g1 := memUse(), runtime.NumGoroutine()
		if f := os.Getenv("WSHEAP"); f != "" {
			fh, _ := os.Create(f)
			pprof.Lookup("heap").WriteTo(fh, 0)
			fh.Close()
		}
		heap += float64(after.heap-before.heap) / n
		stack += float64(after.stack-before.stack) / n
		gor += float64(g1-g0) / n
		tunnels.CloseAll()
		for _, c := range clients {
			c.Close()
		}
		backend.closeAll()
		waitFor(b, 10*time.Second, "tunnels to end", func() bool { return tunnels.Count() == 0 })
	}
	b.ReportMetric(heap/float64(b.N), "heap-B/tunnel")
	b.ReportMetric(stack/float64(b.N), "stack-B/tunnel")
	b.ReportMetric((heap+stack)/float64(b.N), "B/tunnel")
	b.ReportMetric(gor/float64(b.N), "goroutines/tunnel")
}

type mem struct{ heap, stack int64 }

func memUse() mem {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return mem{heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse)}
}

// rawWSDial does an HTTP/1.1 WebSocket handshake by hand and returns the
// bare connection.
func rawWSDial(b testing.TB, addr string, tlsCfg *tls.Config) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	if tlsCfg != nil {
		c = tls.Client(c, tlsCfg)
	}
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", ws.NewKey())
	// Read the 101 byte by byte so that nothing past it is buffered away.
	var hdr []byte
	one := make([]byte, 1)
	for len(hdr) < 4 || string(hdr[len(hdr)-4:]) != "\r\n\r\n" {
		if _, err := c.Read(one); err != nil {
			b.Fatalf("handshake: %v", err)
		}
		hdr = append(hdr, one[0])
	}
	if string(hdr[9:12]) != "101" {
		b.Fatalf("handshake answer %q", hdr)
	}
	return c
}

// rawWSBackend answers WebSocket handshakes from one goroutine and keeps
// the connections without reading them.
type rawWSBackend struct {
	addr  string
	conns chan net.Conn
}

func newRawWSBackend(b testing.TB) *rawWSBackend {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := &rawWSBackend{addr: l.Addr().String(), conns: make(chan net.Conn, 100000)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			req, err := http.ReadRequest(bufio.NewReaderSize(c, 4096))
			if err != nil {
				c.Close()
				continue
			}
			fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Accept: %s\r\n\r\n", ws.AcceptKey(req.Header.Get("Sec-WebSocket-Key")))
			r.conns <- c
		}
	}()
	b.Cleanup(func() { l.Close(); r.closeAll() })
	return r
}

// echoOnce reads one byte from each of the next n connections and writes
// it back.
func (r *rawWSBackend) echoOnce(b testing.TB, n int) {
	held := make([]net.Conn, 0, n)
	for range n {
		c := <-r.conns
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		p := make([]byte, 1)
		if _, err := io.ReadFull(c, p); err != nil {
			b.Fatal(err)
		}
		c.Write(p)
		held = append(held, c)
	}
	for _, c := range held {
		r.conns <- c
	}
}

func (r *rawWSBackend) closeAll() {
	for {
		select {
		case c := <-r.conns:
			c.Close()
		default:
			return
		}
	}
}
