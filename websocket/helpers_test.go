package websocket

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection; both are closed
// when the test ends.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// rig is a running tunnel between two peers: client ⇄ [tunnel] ⇄ backend.
type rig struct {
	tunnel  *Tunnel
	client  net.Conn // the client's own side
	backend net.Conn // the backend's own side
	done    chan Stats
}

// startRig reserves a tunnel under key in reg and runs it with idle.
func startRig(t testing.TB, reg *Registry, key string, idle time.Duration) *rig {
	t.Helper()
	tun, err := reg.Reserve(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	cPeer, cEnd := tcpPair(t)
	bEnd, bPeer := tcpPair(t)
	r := &rig{tunnel: tun, client: cPeer, backend: bPeer, done: make(chan Stats, 1)}
	go func() { r.done <- tun.Run(&ConnEnd{Conn: cEnd}, &ConnEnd{Conn: bEnd}, idle) }()
	return r
}

// wait returns the tunnel's Stats, failing the test after d.
func (r *rig) wait(t testing.TB, d time.Duration) Stats {
	t.Helper()
	select {
	case st := <-r.done:
		return st
	case <-time.After(d):
		t.Fatalf("tunnel still running after %v", d)
		return Stats{}
	}
}

// readEOF reads from c until EOF (or a reset, or another error), failing
// the test if that takes longer than d.
func readEOF(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("no EOF within %v", d)
	}
}

// expect reads exactly len(want) bytes from c and compares them.
func expect(t testing.TB, c net.Conn, want string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %q: %v", want, err)
	}
	if string(buf) != want {
		t.Fatalf("read %q, want %q", buf, want)
	}
}

// waitGoroutines polls until the goroutine count is at most base, failing
// the test after a deadline.
func waitGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, baseline %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

// tlsPair returns the two ends of a loopback TLS connection (client, server)
// with a throwaway self-signed certificate; both are closed when the test
// ends.
func tlsPair(t testing.TB) (*tls.Conn, *tls.Conn) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"tunnel.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	a, b := tcpPair(t)
	client := tls.Client(a, &tls.Config{ServerName: "tunnel.test", RootCAs: roots})
	server := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}
