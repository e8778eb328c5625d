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
	"sync"
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
	ctx := req.Context()
	for {
		pc, reused, err := t.getConn(ctx, key)
		if err != nil {
			return nil, err
		}
		res, sent, err := pc.roundTrip(ctx, req)
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
		// connection's failure is the backend's answer.
		if reused && !sent.responseByte {
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
// not been idle too long, or dials a new one.
func (t *fastH1) getConn(ctx context.Context, key string) (*h1Conn, bool, error) {
	now := t.now()
	t.mu.Lock()
	conns := t.idle[key]
	if n := len(conns); n > 0 {
		pc := conns[n-1]
		if t.idleTimeout <= 0 || now.Sub(pc.idleAt) <= t.idleTimeout {
			conns[n-1] = nil
			t.idle[key] = conns[:n-1]
			t.mu.Unlock()
			return pc, true, nil
		}
		// The newest is too old, so is every other one (oldest first).
		delete(t.idle, key)
		t.mu.Unlock()
		for _, s := range conns {
			_ = s.nc.Close()
		}
	} else {
		t.mu.Unlock()
	}
	nc, err := t.dial(ctx, "tcp", key)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{
		t: t, key: key, nc: nc,
		br: bufio.NewReaderSize(nc, 4<<10),
		bw: bufio.NewWriterSize(nc, 4<<10),
	}, false, nil
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
		_ = pc.nc.SetReadDeadline(pc.t.now().Add(timeout))
	}
	trace := httptrace.ContextClientTrace(ctx)
	var res *http.Response
	for {
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
	if timeout > 0 {
		_ = pc.nc.SetReadDeadline(time.Time{})
	}
	body := &h1Body{pc: pc, rc: res.Body, stop: stop, reuse: !res.Close}
	if res.Body == http.NoBody {
		body.finish(true)
		return res, st, nil
	}
	res.Body = body
	return res, st, nil
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
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
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
	if !b.done {
		b.finish(false)
	}
	return nil
}

// finish releases the connection once: back to the pool after a complete
// body, closed otherwise.
func (b *h1Body) finish(complete bool) {
	b.done = true
	// stop reports false when the cancellation already fired (or is
	// firing): the connection's deadline is spoiled, do not reuse it.
	clean := b.stop() && complete && b.reuse && b.pc.br.Buffered() == 0
	if clean {
		b.pc.t.putConn(b.pc)
		return
	}
	b.pc.close()
}
