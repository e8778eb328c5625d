package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// fastH1 is the round tripper for plain-HTTP (http://) backends. The
// common request, a GET, HEAD or OPTIONS without a body, is sent and its
// response read in the calling goroutine over a pooled keep-alive
// connection: net/http's Transport hands each request to a per-connection
// write goroutine and the response back from a read goroutine, three
// goroutines and several channel operations per request, which profiles of
// the small-response benchmark (bench/RESULTS.md) showed to cost about a
// third of the proxy's CPU. Every other request (a body, an upgrade,
// Expect, Connection: close, non-idempotent methods) goes through the
// standard Transport in fallback, which also keeps its own pool.
//
// Connections are reused LIFO (the warmest first), at most maxIdle per
// backend address, and dropped when idle longer than idleTimeout. A reused
// connection that the backend closed while it was idle fails before any
// response byte arrives; the request (idempotent, bodiless) is then sent
// again on another connection, as the standard Transport does.
type fastH1 struct {
	fallback *http.Transport
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	// responseHeader bounds the wait for the response header after the
	// request was written (timeouts.response_header).
	responseHeader time.Duration
	idleTimeout    time.Duration
	maxIdle        int
	now            func() time.Time

	mu     sync.Mutex
	idle   map[string][]*h1Conn // by host:port, most recently used last
	closed bool
}

func newFastH1(fallback *http.Transport, dial func(ctx context.Context, network, addr string) (net.Conn, error),
	responseHeader, idleTimeout time.Duration, maxIdle int) *fastH1 {
	return &fastH1{
		fallback: fallback, dial: dial,
		responseHeader: responseHeader, idleTimeout: idleTimeout, maxIdle: maxIdle,
		now:  time.Now,
		idle: make(map[string][]*h1Conn),
	}
}

// h1Conn is one keep-alive connection to a backend.
type h1Conn struct {
	t      *fastH1
	key    string
	nc     net.Conn
	lr     limitedConnReader // br's source: bounds the response header
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// onFastPath reports whether req can take the in-goroutine path.
func onFastPath(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	if req.URL.Scheme != "http" || req.Close {
		return false
	}
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	if len(req.Trailer) > 0 {
		return false
	}
	h := req.Header
	if len(h["Upgrade"]) > 0 || len(h["Expect"]) > 0 || len(h["Te"]) > 0 {
		return false
	}
	return true
}

func (t *fastH1) RoundTrip(req *http.Request) (*http.Response, error) {
	if !onFastPath(req) {
		return t.fallback.RoundTrip(req)
	}
	key := req.URL.Host
	if req.URL.Port() == "" {
		// A backend URL may leave out the port (http://backend): dial 80,
		// as the standard Transport does.
		key = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	ctx := req.Context()
	for {
		pc, reused, err := t.getConn(ctx, key)
		if err != nil {
			return nil, err
		}
		res, sent, err := pc.roundTrip(ctx, req)
		if err == nil && reused && res.StatusCode == http.StatusRequestTimeout {
			// Some servers send 408 on a keep-alive connection they are
			// closing for idleness; the standard Transport discards it
			// too. This request never reached them: send it again.
			_ = res.Body.Close()
			continue
		}
		if err == nil {
			return res, nil
		}
		pc.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A reused connection that produced no byte of a response was
		// closed by the backend while idle (or during our write): the
		// request is idempotent and bodiless, so send it again. A fresh
		// connection's failure is the backend's answer, and so is a
		// header timeout: the backend has the request and is slow, and
		// sending it again would only multiply the wait.
		if reused && !sent.responseByte && err != errHeaderTimeout {
			continue
		}
		return nil, err
	}
}

// CloseIdleConnections closes the idle connections of both paths; the
// pool calls it when it is replaced or closed.
func (t *fastH1) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = make(map[string][]*h1Conn)
	t.closed = true
	t.mu.Unlock()
	for _, conns := range idle {
		for _, pc := range conns {
			_ = pc.nc.Close()
		}
	}
	t.fallback.CloseIdleConnections()
}

// getConn returns the most recently used idle connection to key that has
// not been idle too long, or dials a new one. Idle connections past the
// idle timeout (the oldest, at the front) are closed on the way, also when
// a newer one is still fresh.
func (t *fastH1) getConn(ctx context.Context, key string) (*h1Conn, bool, error) {
	now := t.now()
	t.mu.Lock()
	conns := t.idle[key]
	var stale []*h1Conn
	if t.idleTimeout > 0 {
		i := 0
		for i < len(conns) && now.Sub(conns[i].idleAt) > t.idleTimeout {
			i++
		}
		if i > 0 {
			stale = slices.Clone(conns[:i])
			clear(conns[:i])
			conns = conns[i:]
		}
	}
	var pc *h1Conn
	if n := len(conns); n > 0 {
		pc = conns[n-1]
		conns[n-1] = nil
		conns = conns[:n-1]
	}
	if len(conns) == 0 {
		delete(t.idle, key)
	} else {
		t.idle[key] = conns
	}
	t.mu.Unlock()
	for _, s := range stale {
		_ = s.nc.Close()
	}
	if pc != nil {
		return pc, true, nil
	}
	nc, err := t.dial(ctx, "tcp", key)
	if err != nil {
		return nil, false, err
	}
	pc = &h1Conn{
		t: t, key: key, nc: nc,
		lr: limitedConnReader{nc: nc, n: -1},
		bw: bufio.NewWriterSize(nc, 4<<10),
	}
	pc.br = bufio.NewReaderSize(&pc.lr, 4<<10)
	return pc, false, nil
}

// putConn returns pc to the idle pool, or closes it when the pool is full
// or closed.
func (t *fastH1) putConn(pc *h1Conn) {
	pc.idleAt = t.now()
	t.mu.Lock()
	if !t.closed && len(t.idle[pc.key]) < t.maxIdle {
		t.idle[pc.key] = append(t.idle[pc.key], pc)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	_ = pc.nc.Close()
}

func (pc *h1Conn) close() { _ = pc.nc.Close() }

// sendState says how far a failed exchange got.
type sendState struct{ responseByte bool }

// aLongTimeAgo is a deadline that has passed: setting it makes blocked
// reads and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// Bounds on what a backend may send before the final response header.
const (
	maxResponseHeader = 1 << 20 // bytes, 1xx included
	max1xxResponses   = 5
)

var (
	errHeaderTooLarge = errors.New("upstream: response header too large")
	errTooMany1xx     = errors.New("upstream: too many 1xx informational responses")
)

// limitedConnReader reads from nc; while n >= 0 it hands out at most n
// more bytes, then fails with errHeaderTooLarge (n < 0: no limit).
type limitedConnReader struct {
	nc net.Conn
	n  int64
}

func (l *limitedConnReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.nc.Read(p)
	}
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.nc.Read(p)
	l.n -= int64(n)
	return n, err
}

// errHeaderTimeout is the response header timeout (a net.Error whose
// Timeout is true, so the proxy answers 504 and retries apply as for the
// standard Transport's).
var errHeaderTimeout error = headerTimeoutError{}

type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return "upstream: timeout awaiting response headers" }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

// roundTrip writes req and reads the response header on pc. On success the
// response body owns pc: reading it to the end returns pc to the pool,
// closing it early closes pc.
func (pc *h1Conn) roundTrip(ctx context.Context, req *http.Request) (*http.Response, sendState, error) {
	var st sendState
	// A cancelled request (client gone, deadline) unblocks any read or
	// write on the connection, which is then closed.
	stop := context.AfterFunc(ctx, func() { _ = pc.nc.SetDeadline(aLongTimeAgo) })
	if err := req.Write(pc.bw); err != nil {
		stop()
		return nil, st, err
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, st, err
	}
	timeout := pc.t.responseHeader
	if timeout > 0 {
		// Real time: t.now is the pool's clock, not the network's.
		pc.setReadDeadline(ctx, time.Now().Add(timeout))
	}
	trace := httptrace.ContextClientTrace(ctx)
	var res *http.Response
	// The header (and any 1xx before it) may take at most maxResponseHeader
	// bytes from the connection, as the standard Transport's
	// MaxResponseHeaderBytes; a backend cannot make us buffer without end.
	pc.lr.n = maxResponseHeader
	for n1xx := 0; ; n1xx++ {
		if n1xx > max1xxResponses {
			stop()
			return nil, st, errTooMany1xx
		}
		if _, err := pc.br.Peek(1); err != nil {
			stop()
			return nil, st, pc.readErr(err, timeout)
		}
		st.responseByte = true
		var err error
		res, err = http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			return nil, st, pc.readErr(err, timeout)
		}
		code := res.StatusCode
		if code < 100 || code > 199 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			stop()
			return nil, st, errUnexpectedUpgrade
		}
		// Informational responses (103 Early Hints) go to the proxy's
		// trace hook, as the standard Transport does; then the final one.
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(res.Header)); err != nil {
				stop()
				return nil, st, err
			}
		}
	}
	pc.lr.n = -1
	if timeout > 0 {
		pc.setReadDeadline(ctx, time.Time{})
	}
	body := &h1Body{pc: pc, rc: res.Body, stop: stop, reuse: !res.Close}
	if res.Body == http.NoBody {
		body.finish(true)
		return res, st, nil
	}
	res.Body = body
	return res, st, nil
}

// setReadDeadline sets the read deadline without undoing a cancellation:
// the AfterFunc sets its past deadline only after ctx is done, so if it
// ran before this SetReadDeadline, ctx.Err is already visible here and the
// past deadline is put back.
func (pc *h1Conn) setReadDeadline(ctx context.Context, d time.Time) {
	_ = pc.nc.SetReadDeadline(d)
	if ctx.Err() != nil {
		_ = pc.nc.SetDeadline(aLongTimeAgo)
	}
}

// readErr turns a read failure while waiting for the response header into
// the error the proxy reports: the header timeout when the deadline we set
// passed (not a cancellation), else the error itself.
func (pc *h1Conn) readErr(err error, timeout time.Duration) error {
	var ne net.Error
	if timeout > 0 && errors.As(err, &ne) && ne.Timeout() {
		return errHeaderTimeout
	}
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// h1Body is a response body on a fast-path connection. At EOF the
// connection goes back to the pool if it is clean (no cancellation raced
// in, nothing unread buffered, the backend did not ask to close); Close
// before EOF closes it.
type h1Body struct {
	pc    *h1Conn
	rc    io.ReadCloser
	stop  func() bool
	reuse bool
	done  atomic.Bool // a Close may race a Read (a proxy tearing down)
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

// finish releases the connection once: back to the pool after a complete
// body, closed otherwise.
func (b *h1Body) finish(complete bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	// stop reports false when the cancellation already fired (or is
	// firing): the connection's deadline is spoiled, do not reuse it.
	clean := b.stop() && complete && b.reuse && b.pc.br.Buffered() == 0
	if clean {
		b.pc.t.putConn(b.pc)
		return
	}
	b.pc.close()
}
