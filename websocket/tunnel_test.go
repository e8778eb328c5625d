package websocket

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTunnelCopiesBothWays(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	r := startRig(t, reg, "k", time.Minute)

	if _, err := r.client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	expect(t, r.backend, "hello")
	if _, err := r.backend.Write([]byte("world!")); err != nil {
		t.Fatal(err)
	}
	expect(t, r.client, "world!")

	// 4 MiB each way at once: exercises the small/big buffer switch and
	// full-duplex copying.
	up, down := make([]byte, 4<<20), make([]byte, 4<<20)
	rand.Read(up)
	rand.Read(down)
	var wg sync.WaitGroup
	var gotUp, gotDown []byte
	var errUp, errDown error
	wg.Add(4)
	go func() { defer wg.Done(); _, errUp = r.client.Write(up) }()
	go func() { defer wg.Done(); _, errDown = r.backend.Write(down) }()
	go func() { defer wg.Done(); gotUp = readN(r.backend, len(up)) }()
	go func() { defer wg.Done(); gotDown = readN(r.client, len(down)) }()
	wg.Wait()
	if errUp != nil || errDown != nil {
		t.Fatal(errUp, errDown)
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatal("payload corrupted in transit")
	}

	r.client.Close()
	readEOF(t, r.backend, 3*time.Second)
	r.backend.Close()
	st := r.wait(t, 3*time.Second)
	if st.Up != 5+4<<20 || st.Down != 6+4<<20 {
		t.Errorf("stats %+v", st)
	}
	if st.Reason != ReasonClientClosed {
		t.Errorf("reason %q, want %q", st.Reason, ReasonClientClosed)
	}
	if n := reg.Count(); n != 0 {
		t.Errorf("registry still counts %d", n)
	}
}

func readN(c net.Conn, n int) []byte {
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, n)
	k, _ := io.ReadFull(c, b)
	return b[:k]
}

func TestTunnelHalfClose(t *testing.T) {
	t.Parallel()
	r := startRig(t, NewRegistry(), "k", time.Minute)
	r.client.Write([]byte("bye"))
	r.client.(*net.TCPConn).CloseWrite()
	expect(t, r.backend, "bye")
	readEOF(t, r.backend, 3*time.Second) // the half-close reached the backend
	// The other direction still works until the backend closes too.
	if _, err := r.backend.Write([]byte("late reply")); err != nil {
		t.Fatal(err)
	}
	expect(t, r.client, "late reply")
	r.backend.(*net.TCPConn).CloseWrite()
	readEOF(t, r.client, 3*time.Second)
	if st := r.wait(t, 3*time.Second); st.Reason != ReasonClientClosed {
		t.Errorf("reason %q", st.Reason)
	}
}

// A side that does not follow a half-close is closed after CloseTimeout.
func TestTunnelCloseTimeout(t *testing.T) {
	t.Parallel()
	r := startRig(t, NewRegistry(), "k", time.Minute)
	start := time.Now()
	r.backend.Close() // backend gone; the client never closes by itself
	readEOF(t, r.client, CloseTimeout+2*time.Second)
	st := r.wait(t, CloseTimeout+2*time.Second)
	if st.Reason != ReasonBackendClosed {
		t.Errorf("reason %q", st.Reason)
	}
	t.Logf("closed after %v", time.Since(start))
}

func TestTunnelBackendReset(t *testing.T) {
	t.Parallel()
	r := startRig(t, NewRegistry(), "k", time.Minute)
	r.backend.(*net.TCPConn).SetLinger(0)
	r.backend.Close() // RST
	readEOF(t, r.client, 2*time.Second)
	if st := r.wait(t, 2*time.Second); st.Reason != ReasonBackendError && st.Reason != ReasonBackendClosed {
		t.Errorf("reason %q", st.Reason)
	}
}

func TestTunnelIdleTimeout(t *testing.T) {
	t.Parallel()
	r := startRig(t, NewRegistry(), "k", 150*time.Millisecond)
	st := r.wait(t, 3*time.Second)
	if st.Reason != ReasonIdle {
		t.Errorf("reason %q, want %q", st.Reason, ReasonIdle)
	}
	readEOF(t, r.client, time.Second)
	readEOF(t, r.backend, time.Second)
}

// Traffic in one direction keeps the tunnel open although the other
// direction's reader sees its deadline expire again and again.
func TestTunnelIdleKeptAliveOneWay(t *testing.T) {
	t.Parallel()
	const idle = 400 * time.Millisecond
	r := startRig(t, NewRegistry(), "k", idle)
	go io.Copy(io.Discard, r.backend)
	for range 12 {
		if _, err := r.client.Write([]byte("x")); err != nil {
			t.Fatalf("tunnel closed while active: %v", err)
		}
		time.Sleep(idle / 4)
		select {
		case st := <-r.done:
			t.Fatalf("tunnel ended while active: %+v", st)
		default:
		}
	}
	if st := r.wait(t, 3*time.Second); st.Reason != ReasonIdle || st.Up != 12 {
		t.Errorf("stats %+v", st)
	}
}

// Over TLS (a hijacked HTTPS connection), a read deadline that expires
// while only the other direction carries traffic must leave the connection
// usable: crypto/tls does not make read timeouts sticky. The half-close is
// a close_notify.
func TestTunnelTLSClientSide(t *testing.T) {
	t.Parallel()
	const idle = 400 * time.Millisecond
	reg := NewRegistry()
	tun, _ := reg.Reserve("k", 0)
	cPeer, cEnd := tlsPair(t)
	bEnd, bPeer := tcpPair(t)
	done := make(chan Stats, 1)
	go func() { done <- tun.Run(&ConnEnd{Conn: cEnd}, &ConnEnd{Conn: bEnd}, idle) }()
	copied := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, cPeer)
		copied <- n
	}()
	for range 8 { // backend → client only, for several idle periods
		if _, err := bPeer.Write([]byte("tick")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 4)
	}
	if _, err := cPeer.Write([]byte("still there")); err != nil {
		t.Fatal(err)
	}
	expect(t, bPeer, "still there")
	bPeer.(*net.TCPConn).CloseWrite()
	// The client side gets a close_notify: its reader (io.Copy) ends.
	select {
	case n := <-copied:
		if n != 32 {
			t.Errorf("client read %d bytes, want 32", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("half-close did not reach the TLS client")
	}
	cPeer.Close()
	select {
	case st := <-done:
		if st.Reason != ReasonBackendClosed || st.Down != 32 || st.Up != 11 {
			t.Errorf("stats %+v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel did not end")
	}
}

func TestTunnelBufferedBytesFirst(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	tun, _ := reg.Reserve("k", 0)
	cPeer, cEnd := tcpPair(t)
	bEnd, bPeer := tcpPair(t)
	done := make(chan Stats, 1)
	go func() {
		done <- tun.Run(&ConnEnd{Conn: cEnd, Buffered: []byte("early ")}, &ConnEnd{Conn: bEnd}, 0)
	}()
	cPeer.Write([]byte("later"))
	expect(t, bPeer, "early later")
	cPeer.Close()
	bPeer.Close()
	<-done
}

func TestTunnelOnCloseRunsOnce(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	tun, _ := reg.Reserve("k", 0)
	_, cEnd := tcpPair(t)
	bEnd, _ := tcpPair(t)
	var calls atomic.Int32
	backend := &ConnEnd{Conn: bEnd, OnClose: func() { calls.Add(1) }}
	go tun.Close()
	tun.Close()
	st := tun.Run(&ConnEnd{Conn: cEnd}, backend, 0)
	backend.Close()
	if calls.Load() != 1 || st.Reason != ReasonClosed {
		t.Errorf("OnClose ran %d times, reason %q", calls.Load(), st.Reason)
	}
	if _, err := cEnd.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("client end not closed: %v", err)
	}
}

func TestRegistryLimits(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	a1, err1 := reg.Reserve("a", 2)
	_, err2 := reg.Reserve("a", 2)
	_, err3 := reg.Reserve("a", 2)
	_, errB := reg.Reserve("b", 2)
	if err1 != nil || err2 != nil || errB != nil || !errors.Is(err3, ErrTooManyTunnels) {
		t.Fatalf("errors %v %v %v %v", err1, err2, err3, errB)
	}
	if reg.Count() != 3 || reg.CountKey("a") != 2 {
		t.Fatalf("count %d, a %d", reg.Count(), reg.CountKey("a"))
	}
	a1.Release()
	a1.Release() // no double count
	if reg.CountKey("a") != 1 {
		t.Fatalf("a %d after Release", reg.CountKey("a"))
	}
	if _, err := reg.Reserve("a", 2); err != nil {
		t.Fatalf("slot not given back: %v", err)
	}
	if _, err := reg.Reserve("a", 0); err != nil {
		t.Fatalf("limit 0 means none: %v", err)
	}
}

func TestRegistryCloseMatchingAndAll(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	a1 := startRig(t, reg, "a", time.Minute)
	a2 := startRig(t, reg, "a", time.Minute)
	b := startRig(t, reg, "b", time.Minute)
	pending, _ := reg.Reserve("b", 0) // reserved, not running yet

	if n := reg.CloseMatching(func(k string) bool { return k == "a" }); n != 2 {
		t.Fatalf("CloseMatching closed %d, want 2", n)
	}
	for _, r := range []*rig{a1, a2} {
		readEOF(t, r.client, time.Second)
		readEOF(t, r.backend, time.Second)
		if st := r.wait(t, time.Second); st.Reason != ReasonClosed {
			t.Errorf("reason %q", st.Reason)
		}
	}
	select {
	case <-b.done:
		t.Fatal("tunnel b closed by CloseMatching(a)")
	default:
	}
	if n := reg.Close(); n != 2 {
		t.Fatalf("Close closed %d, want 2 (b and the reserved one)", n)
	}
	b.wait(t, time.Second)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := reg.Wait(short); err == nil {
		t.Fatal("Wait returned while a reserved tunnel is still counted")
	}
	_, cEnd := tcpPair(t)
	bEnd, _ := tcpPair(t)
	if st := pending.Run(&ConnEnd{Conn: cEnd}, &ConnEnd{Conn: bEnd}, 0); st.Reason != ReasonClosed {
		t.Errorf("reserved tunnel ran after Close: %q", st.Reason)
	}
	if _, err := reg.Reserve("c", 0); !errors.Is(err, ErrRegistryClosed) {
		t.Errorf("Reserve after Close: %v", err)
	}
	if err := reg.Wait(context.Background()); err != nil {
		t.Errorf("Wait: %v", err)
	}
	if n := reg.Count(); n != 0 {
		t.Errorf("count %d", n)
	}
}

// TestTunnelGoroutinesStop checks that every goroutine a tunnel starts has
// stopped once the tunnels ended, whichever way they ended. Not parallel:
// it counts the goroutines of the whole process.
func TestTunnelGoroutinesStop(t *testing.T) {
	base := runtime.NumGoroutine()
	reg := NewRegistry()
	var rigs []*rig
	for i := range 30 {
		r := startRig(t, reg, "k", 300*time.Millisecond)
		r.client.Write([]byte("ping"))
		expect(t, r.backend, "ping")
		switch i % 5 {
		case 0: // client closes, backend follows
			r.client.Close()
			readEOF(t, r.backend, 2*time.Second)
			r.backend.Close()
		case 1: // backend closes, client never does (CloseTimeout)
			r.backend.Close()
		case 2: // reset
			r.client.(*net.TCPConn).SetLinger(0)
			r.client.Close()
		case 3: // idle timeout
		case 4: // registry
		}
		rigs = append(rigs, r)
	}
	reg.CloseAll()
	for _, r := range rigs {
		r.wait(t, 5*time.Second)
		r.client.Close()
		r.backend.Close()
	}
	waitGoroutines(t, base)
}
