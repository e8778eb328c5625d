package upstream

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
)

// forwarder is the http.RoundTripper the proxy hands to ReverseProxy. For
// each request it asks the pool's balancer for a backend (waiting for a
// slot when every backend up is at max_conns), takes a slot on it, points
// the request at it and sends it through the backend's transport. On
// failure it reports the outcome to passive health and moves to another
// backend as the retry rules allow (retry.go): after a dial failure for any
// method, after a reset or timeout before the response header for
// idempotent methods within Retries.Max and the pool's budget. It never
// retries once a response header arrived.
//
// It modifies the request it is given (URL scheme and host, Body, GetBody,
// Close): that request is the proxy's own clone, never the client's. Safe
// for concurrent use.
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
//
// The in-flight count of a backend goes up once per attempt that got a
// slot and down exactly once: at once when the attempt fails, else when
// the response body (or the 101's connection) is closed, which ReverseProxy
// and the WebSocket path do on every path.
func (f *forwarder) roundTrip(req *http.Request, upgrade bool) (*http.Response, error) {
	p := f.pool
	if p.closed.Load() && !upgrade {
		// A closed pool keeps no new idle connections. (A handshake's
		// connection never returns to the pool after a 101, and
		// "Connection: close" would spoil its Connection: Upgrade.)
		req.Close = true
	}
	rp := &p.retries
	if rp.max > 0 {
		rp.budget.request()
	}
	body, err := newReplayBody(req, rp)
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	cands := p.Backends
	var q queueWait
	defer q.stop()
	var (
		last    *Backend
		lastErr error
		extra   int // retries other than dial failovers
	)
	for {
		b, err := p.acquire(req, cands, &q)
		if err != nil {
			if lastErr != nil {
				break // report the failure that led here
			}
			return nil, err
		}
		body.attach(req)
		req.URL.Scheme = b.scheme
		req.URL.Host = b.URL.Host
		rt := b.rt
		if upgrade {
			rt = b.upgradeRT
		}
		res, err := rt.RoundTrip(req)
		if err == nil {
			p.observeResponse(b, res.StatusCode)
			res.Body = trackBody(res, b)
			if p.sticky != nil {
				p.sticky.stamp(req, res.Header, b)
			}
			return res, nil
		}
		b.release()
		last, lastErr = b, err
		if ctx.Err() != nil {
			break
		}
		p.observeError(ctx, b, err)
		dial := isDialError(err)
		if !body.reusable(dial) || (!dial && !rp.canRetry(req, &body, extra, err)) {
			break
		}
		cands = without(cands, b)
		if len(cands) == 0 {
			break
		}
		if dial {
			f.log.LogAttrs(ctx, slog.LevelWarn, "backend unreachable, trying the next one",
				slog.String("pool", p.Name), slog.String("backend", b.name), slog.Any("error", err))
			continue
		}
		if !rp.budget.withdraw(p.clock()) {
			f.log.LogAttrs(ctx, slog.LevelWarn, "backend failed; not retried: retry budget exhausted",
				slog.String("pool", p.Name), slog.String("backend", b.name), slog.Any("error", err))
			break
		}
		extra++
		f.log.LogAttrs(ctx, slog.LevelWarn, "backend failed before answering, retrying on another one",
			slog.String("pool", p.Name), slog.String("backend", b.name), slog.Any("error", err),
			slog.Int("retry", extra))
	}
	return nil, &attemptError{backend: last, err: lastErr}
}

// without returns a new slice of backends minus b, in order.
func without(backends []*Backend, b *Backend) []*Backend {
	out := make([]*Backend, 0, len(backends)-1)
	for _, x := range backends {
		if x != b {
			out = append(out, x)
		}
	}
	return out
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
		t.b.release()
	}
	return err
}

type trackedConn struct {
	trackedBody
	w io.Writer
}

func (t *trackedConn) Write(p []byte) (int, error) { return t.w.Write(p) }
