package upstream

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
)

// forwarder is the http.RoundTripper the proxy hands to ReverseProxy. For
// each request it picks a backend, points the request at it and sends it
// through the backend's transport; when the dial fails (nothing was sent)
// and no byte of the request body was consumed, it fails over to the next
// backend in pool order, up to one attempt per backend, for any method.
//
// It modifies the request it is given (URL scheme and host, Body, Close):
// that request is the proxy's own clone, never the client's. Safe for
// concurrent use.
type forwarder struct {
	pool *Pool
	log  *slog.Logger
}

func (f *forwarder) RoundTrip(req *http.Request) (*http.Response, error) {
	return f.roundTrip(req, false)
}

// roundTrip is RoundTrip; upgrade sends req (a WebSocket handshake) through
// each backend's upgrade transport (see Backend.upgradeRT). A 101 response's
// body is then the backend connection, and the backend's in-flight count
// drops when it is closed.
func (f *forwarder) roundTrip(req *http.Request, upgrade bool) (*http.Response, error) {
	p := f.pool
	n := len(p.Backends)
	start := p.pick()
	if p.closed.Load() && !upgrade {
		// A closed pool keeps no new idle connections. (A handshake's
		// connection never returns to the pool after a 101, and
		// "Connection: close" would spoil its Connection: Upgrade.)
		req.Close = true
	}
	clientBody := req.Body
	var (
		last    *Backend
		lastErr error
	)
	for i := range n {
		b := p.Backends[(start+i)%n]
		var body *attemptBody
		if clientBody != nil && clientBody != http.NoBody {
			body = &attemptBody{r: clientBody}
			req.Body = body
		}
		req.URL.Scheme = b.scheme
		req.URL.Host = b.URL.Host

		rt := b.rt
		if upgrade {
			rt = b.upgradeRT
		}
		b.inflight.Add(1)
		res, err := rt.RoundTrip(req)
		if err == nil {
			res.Body = trackBody(res, b)
			return res, nil
		}
		b.inflight.Add(-1)
		last, lastErr = b, err

		if i == n-1 || !isDialError(err) || req.Context().Err() != nil || (body != nil && !body.detach()) {
			break
		}
		f.log.LogAttrs(req.Context(), slog.LevelWarn, "backend unreachable, trying the next one",
			slog.String("pool", p.Name), slog.String("backend", b.name), slog.Any("error", err))
	}
	return nil, &attemptError{backend: last, err: lastErr}
}

// errBodyDetached is returned to a transport that reads the request body of
// an attempt that was abandoned for failover.
var errBodyDetached = errors.New("upstream: request body handed to another attempt")

// attemptBody is the request body as seen by one attempt. Its Close does not
// close the client's body (the transport closes bodies on failure, and the
// next attempt still needs it), and it records whether anything was read,
// which decides whether failover is safe.
type attemptBody struct {
	r        io.Reader
	read     atomic.Int64 // bytes handed to the transport
	reading  atomic.Int32 // Reads in progress
	detached atomic.Bool
}

func (b *attemptBody) Read(p []byte) (int, error) {
	b.reading.Add(1)
	defer b.reading.Add(-1)
	if b.detached.Load() {
		return 0, errBodyDetached
	}
	n, err := b.r.Read(p)
	if n > 0 {
		b.read.Add(int64(n))
	}
	return n, err
}

// Close is a no-op: the client's body belongs to the server and the proxy.
func (b *attemptBody) Close() error { return nil }

// detach cuts this attempt off from the client's body and reports whether
// the body is untouched (no byte read, no Read in progress), that is,
// whether another attempt may send it. Setting detached before looking at
// reading pairs with Read's order, so a Read either sees detached or is seen.
func (b *attemptBody) detach() bool {
	b.detached.Store(true)
	return b.reading.Load() == 0 && b.read.Load() == 0
}

// trackBody wraps res.Body so that the backend's in-flight count drops
// exactly once, when the proxy closes the body (ReverseProxy closes it on
// every path). A 101 response body stays writable for protocol upgrades.
func trackBody(res *http.Response, b *Backend) io.ReadCloser {
	if rwc, ok := res.Body.(io.ReadWriteCloser); ok && res.StatusCode == http.StatusSwitchingProtocols {
		return &trackedConn{trackedBody: trackedBody{ReadCloser: rwc, b: b}, w: rwc}
	}
	return &trackedBody{ReadCloser: res.Body, b: b}
}

type trackedBody struct {
	io.ReadCloser
	b    *Backend
	done atomic.Bool
}

func (t *trackedBody) Close() error {
	err := t.ReadCloser.Close()
	if t.done.CompareAndSwap(false, true) {
		t.b.inflight.Add(-1)
	}
	return err
}

type trackedConn struct {
	trackedBody
	w io.Writer
}

func (t *trackedConn) Write(p []byte) (int, error) { return t.w.Write(p) }
