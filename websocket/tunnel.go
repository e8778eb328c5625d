package websocket

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Buffer sizes. Every tunnel owns two small buffers (one per direction); an
// idle tunnel blocks in Read on those only, so it holds 1 KiB of buffers
// instead of the 64 KiB of two io.Copy calls. A read that fills its small
// buffer means more is waiting, so the rest is read at once into a pooled
// big buffer, which goes back to the pool as soon as it has been written
// out. 16 KiB takes a whole TLS record (the most one tls.Conn Read returns)
// and keeps loopback throughput within reach of io.Copy's 32 KiB.
const (
	smallBufSize = 512
	bigBufSize   = 16 << 10
)

// CloseTimeout bounds how long a tunnel stays half-open. When one side ends
// its stream (EOF), the end of stream is passed on to the other side as a
// half-close, which a WebSocket peer answers by closing too; whatever is
// still open CloseTimeout later is closed.
const CloseTimeout = time.Second

var bigBufs = sync.Pool{New: func() any { return new([bigBufSize]byte) }}

// Reason says why a tunnel ended: what happened first.
type Reason string

// Reasons a tunnel ends.
const (
	ReasonClientClosed  Reason = "client_closed"  // the client ended its stream (EOF)
	ReasonBackendClosed Reason = "backend_closed" // the backend ended its stream (EOF)
	ReasonClientError   Reason = "client_error"   // reading from or writing to the client failed
	ReasonBackendError  Reason = "backend_error"  // reading from or writing to the backend failed
	ReasonIdle          Reason = "idle_timeout"   // no byte either way for the idle timeout
	ReasonClosed        Reason = "closed"         // Tunnel.Close, or the Registry closed it
)

// Stats describes a tunnel that ended.
type Stats struct {
	Up       int64         // bytes copied from the client to the backend
	Down     int64         // bytes copied from the backend to the client
	Duration time.Duration // from Run to the end
	Reason   Reason
}

type direction int

const (
	up   direction = iota // client → backend
	down                  // backend → client
)

type tunnelState uint8

const (
	reserved tunnelState = iota // counted by the Registry, not running yet
	running
	finished
)

// Tunnel copies bytes both ways between a client and a backend after a
// WebSocket handshake. A Tunnel comes from Registry.Reserve, which counts it
// against its route's limit; then exactly one of Run (which ends by
// releasing it) or Release must be called.
//
// Close may be called from any goroutine at any time, also before Run; the
// other methods belong to the goroutine that reserved the tunnel.
type Tunnel struct {
	reg *Registry
	key string

	mu      sync.Mutex
	state   tunnelState
	closing bool   // both ends are being closed (or will be, when Run starts)
	reason  Reason // the first thing that happened
	client  End
	backend End
	eofs    int         // directions that ended with EOF
	linger  *time.Timer // closes a half-open tunnel after CloseTimeout

	idle  time.Duration
	start time.Time
	last  atomic.Int64 // when a byte last arrived, as nanoseconds since start
	bytes [2]atomic.Int64
	small [2][smallBufSize]byte
}

// Key is the route key the tunnel was reserved under.
func (t *Tunnel) Key() string { return t.key }

// Run copies bytes between client and backend until the tunnel ends, then
// closes both ends, releases the tunnel from its Registry and returns what
// happened. Any buffered bytes must already be part of the ends (see
// ConnEnd.Buffered).
//
// A tunnel ends when:
//   - both sides have ended their streams: an EOF read from one side is
//     passed on to the other as a half-close (End.CloseWrite); an end that
//     cannot half-close, or a side that does not follow within
//     CloseTimeout, closes the tunnel;
//   - reading or writing fails on either side (a reset, a closed
//     connection): both are closed at once;
//   - no byte arrived from either side for idle (if idle > 0). Idleness is
//     watched with the read deadlines of the ends that support them (every
//     ConnEnd; the backend end always is one): a deadline set once and moved
//     only when it expires, so a busy tunnel costs no timer work per byte;
//   - Close is called (directly or by the Registry).
//
// Run copies one direction on the calling goroutine and the other on a
// goroutine of its own, which has ended when Run returns. Run may be called
// only once.
func (t *Tunnel) Run(client, backend End, idle time.Duration) Stats {
	t.mu.Lock()
	if t.state != reserved {
		t.mu.Unlock()
		panic("websocket: Tunnel.Run called twice or after Release")
	}
	t.state = running
	t.client, t.backend = client, backend
	t.idle, t.start = idle, time.Now()
	closing := t.closing
	t.mu.Unlock()

	if !closing {
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.pump(down)
		}()
		t.pump(up)
		<-done
	}

	t.mu.Lock()
	t.state = finished
	if t.linger != nil {
		t.linger.Stop()
	}
	reason := t.reason
	t.mu.Unlock()
	_ = client.Close()
	_ = backend.Close()
	t.reg.remove(t)
	if reason == "" {
		reason = ReasonClosed
	}
	return Stats{
		Up:       t.bytes[up].Load(),
		Down:     t.bytes[down].Load(),
		Duration: time.Since(t.start),
		Reason:   reason,
	}
}

// Release gives back a reserved tunnel that will not run (the handshake with
// the backend failed). It does nothing after Run started.
func (t *Tunnel) Release() {
	t.mu.Lock()
	if t.state != reserved {
		t.mu.Unlock()
		return
	}
	t.state = finished
	t.mu.Unlock()
	t.reg.remove(t)
}

// Close ends the tunnel: both ends are closed, so that Run returns promptly.
// Closing a tunnel that has not started running makes Run close its ends at
// once. Close is safe to call from any goroutine, any number of times.
func (t *Tunnel) Close() { t.shutdown(ReasonClosed) }

// shutdown records reason (unless something happened before) and closes
// both ends, once.
func (t *Tunnel) shutdown(reason Reason) {
	t.mu.Lock()
	if t.reason == "" {
		t.reason = reason
	}
	if t.closing || t.state == finished {
		t.mu.Unlock()
		return
	}
	t.closing = true
	client, backend := t.client, t.backend
	t.mu.Unlock()
	if client != nil { // running; otherwise Run sees closing
		_ = client.Close()
		_ = backend.Close()
	}
}

// pump copies one direction until it ends.
func (t *Tunnel) pump(d direction) {
	src, dst := t.client, t.backend
	if d == down {
		src, dst = dst, src
	}
	var rd readDeadliner
	if t.idle > 0 {
		if rd, _ = src.(readDeadliner); rd != nil {
			_ = rd.SetReadDeadline(time.Now().Add(t.idle))
		}
	}
	// Reads go into the small per-direction buffer; after a read that
	// filled its buffer (a burst) the next reads borrow a pooled big buffer
	// until one comes back short. Bytes read are always written before the
	// next read: a read that exactly fills a buffer must never wait for more.
	small := t.small[d][:]
	buf := small
	var big *[bigBufSize]byte
	defer func() {
		if big != nil {
			bigBufs.Put(big)
		}
	}()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			t.last.Store(int64(time.Since(t.start)))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				t.shutdown(sideError(d, false))
				return
			}
			t.bytes[d].Add(int64(n))
		}
		switch {
		case n == len(buf) && err == nil:
			if big == nil {
				big = bigBufs.Get().(*[bigBufSize]byte)
				buf = big[:]
			}
		case big != nil:
			bigBufs.Put(big)
			big, buf = nil, small
		}
		switch {
		case err == nil:
		case rd != nil && errors.Is(err, os.ErrDeadlineExceeded):
			if !t.stillActive(rd) {
				t.shutdown(ReasonIdle)
				return
			}
		case err == io.EOF:
			t.halfClose(d, dst)
			return
		default:
			t.shutdown(sideError(d, true))
			return
		}
	}
}

// stillActive is called when the read deadline of rd expired. If a byte
// arrived (either way) within the idle timeout it moves the deadline to
// idle after that byte and reports true; otherwise the tunnel is idle.
func (t *Tunnel) stillActive(rd readDeadliner) bool {
	quiet := time.Since(t.start) - time.Duration(t.last.Load())
	if quiet >= t.idle {
		return false
	}
	return rd.SetReadDeadline(time.Now().Add(t.idle-quiet)) == nil
}

// halfClose passes the EOF read in direction d on to dst. When both
// directions have ended, Run finishes; until then CloseTimeout runs.
func (t *Tunnel) halfClose(d direction, dst End) {
	reason := ReasonClientClosed
	if d == down {
		reason = ReasonBackendClosed
	}
	t.mu.Lock()
	if t.reason == "" {
		t.reason = reason
	}
	t.eofs++
	if t.eofs == 2 || t.closing {
		t.mu.Unlock()
		return // Run closes both ends
	}
	t.mu.Unlock()

	if dst.CloseWrite() != nil {
		t.shutdown(reason)
		return
	}
	t.mu.Lock()
	if !t.closing && t.linger == nil {
		t.linger = time.AfterFunc(CloseTimeout, func() { t.shutdown(reason) })
	}
	t.mu.Unlock()
}

// sideError is the reason for a failed read (read) or write in direction d.
func sideError(d direction, read bool) Reason {
	if (d == up) == read {
		return ReasonClientError
	}
	return ReasonBackendError
}
