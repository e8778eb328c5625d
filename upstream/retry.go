package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// Retries.
//
// Every retry happens inside the forwarder's RoundTrip, before a response
// is handed to ReverseProxy, so no retry can follow a response byte sent to
// the client: once a response header arrived the attempt is final, and a
// failure while its body is relayed aborts the client's response.
//
//   - A dial failure (nothing was sent) moves to another backend for any
//     method, when the body is empty, buffered or still untouched; each
//     backend is tried at most once. These failovers are not counted
//     against Retries.Max or the budget.
//   - Any other failure before the response header that is worth repeating
//     (EOF or connection reset, a timeout such as the response-header
//     timeout) is retried on a backend not tried yet, only for idempotent
//     methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE),
//     only when the body is empty or was buffered, at most Retries.Max
//     times per request, and only while the pool's retry budget allows.
//
// A body is buffered before the first attempt only for an idempotent
// method, when Retries.Max > 0, its Content-Length is known and at most
// Retries.MaxBody, and the client did not send Expect: 100-continue (which
// leaves the decision to read the body to the backend). A body of unknown
// length is streamed, never read ahead, so it is not retried.

// retryPolicy is a pool's configuration.Retries.
type retryPolicy struct {
	max     int
	maxBody int64
	budget  retryBudget
}

// init sets rp from c; now is the pool clock's current time.
func (rp *retryPolicy) init(c config.Retries, now int64) {
	rp.max, rp.maxBody = max(c.Max, 0), max(int64(c.MaxBody), 0)
	rp.budget.init(c.BudgetPercent, now)
}

// idempotent reports whether method is idempotent (RFC 9110 §9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// retryableError reports whether a failure before the response header is
// worth repeating on another backend: the connection was closed or reset,
// or a timeout (response header, TLS handshake) fired. Verification
// failures, malformed responses and the like would fail again.
func retryableError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The retry budget is a token bucket counted in thousandths of a retry:
// each request deposits BudgetPercent/100 of a retry, each retry withdraws
// one. On top of that, a minimum of minRetriesPerSecond is credited over
// time (lazily, when a retry asks), so a quiet pool can still retry. The
// bucket holds at most budgetCap retries, and starts with the per-second
// minimum. Over any period, retries ≤ BudgetPercent% of requests +
// minRetriesPerSecond × seconds + that start.
const (
	minRetriesPerSecond = 3
	budgetCap           = 10 * 1000
	tokensPerRetry      = 1000
)

type retryBudget struct {
	deposit int64        // per request, in thousandths
	tokens  atomic.Int64 // thousandths of a retry
	last    atomic.Int64 // clock time of the last minimum-rate credit
}

func (b *retryBudget) init(percent int, now int64) {
	b.deposit = int64(min(max(percent, 0), 100)) * tokensPerRetry / 100
	b.tokens.Store(minRetriesPerSecond * tokensPerRetry)
	b.last.Store(now)
}

// request credits one request. The cap is checked loosely (concurrent
// requests may overshoot it by a few deposits), to keep this one load and
// one add.
func (b *retryBudget) request() {
	if b.deposit > 0 && b.tokens.Load() < budgetCap {
		b.tokens.Add(b.deposit)
	}
}

// withdraw takes one retry from the budget if it has one.
func (b *retryBudget) withdraw(now int64) bool {
	if last := b.last.Load(); now > last {
		elapsed := min(now-last, int64(10*time.Second))
		credit := elapsed * minRetriesPerSecond * tokensPerRetry / int64(time.Second)
		if credit > 0 && b.last.CompareAndSwap(last, now) {
			if t := b.tokens.Add(credit); t > budgetCap {
				b.tokens.Add(min(budgetCap-t, 0)) // trim back to the cap
			}
		}
	}
	for {
		t := b.tokens.Load()
		if t < tokensPerRetry {
			return false
		}
		if b.tokens.CompareAndSwap(t, t-tokensPerRetry) {
			return true
		}
	}
}

// replayBody is the request body across attempts: none, a buffer each
// attempt reads afresh, or the client's stream, which only an attempt that
// failed to dial (reading nothing) may hand to the next.
type replayBody struct {
	stream   io.Reader // the client's body when streamed
	buf      []byte    // the whole body when buffered
	buffered bool
	cur      *attemptBody // the stream as given to the current attempt
}

// newReplayBody prepares req's body for attempts under rp, buffering it
// when the request may be retried (see the rules above).
func newReplayBody(req *http.Request, rp *retryPolicy) (replayBody, error) {
	body := req.Body
	if body == nil || body == http.NoBody {
		return replayBody{}, nil
	}
	if rp.max > 0 && req.ContentLength > 0 && req.ContentLength <= rp.maxBody &&
		idempotent(req.Method) && !websocket.HasToken(req.Header["Expect"], "100-continue") {
		buf := make([]byte, req.ContentLength)
		if _, err := io.ReadFull(body, buf); err != nil {
			return replayBody{}, fmt.Errorf("reading request body: %w", err)
		}
		return replayBody{buf: buf, buffered: true}, nil
	}
	return replayBody{stream: body}, nil
}

// attach gives req the body for the next attempt.
func (rb *replayBody) attach(req *http.Request) {
	switch {
	case rb.buffered:
		buf := rb.buf
		req.Body = io.NopCloser(bytes.NewReader(buf))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	case rb.stream != nil:
		rb.cur = &attemptBody{r: rb.stream}
		req.Body = rb.cur
	}
}

// reusable reports whether another attempt may send the body after a
// failure; dial says the failed attempt never connected. It cuts a
// streamed body off from the failed attempt.
func (rb *replayBody) reusable(dial bool) bool {
	switch {
	case rb.buffered, rb.stream == nil:
		return true
	case !dial:
		return false
	}
	return rb.cur.detach()
}

// canRetry reports whether a failure other than a dial error may be
// retried under the policy, not counting the budget: extra is the number
// of retries already made.
func (rp *retryPolicy) canRetry(req *http.Request, body *replayBody, extra int, err error) bool {
	return extra < rp.max && idempotent(req.Method) && (body.buffered || body.stream == nil) && retryableError(err)
}
