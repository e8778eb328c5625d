package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// StatusClientClosedRequest is the status recorded when the client went away
// before the backend answered (nginx's 499). It is written to the
// ResponseWriter only so that the access log records it; the client is gone.
const StatusClientClosedRequest = 499

// errUnexpectedUpgrade rejects a 101 Switching Protocols to a request that
// did not ask for one (only WebSocket handshakes, which do not go through
// ReverseProxy, keep their Upgrade).
var errUnexpectedUpgrade = errors.New("upstream: backend switched protocols without being asked")

// dialError marks a failure to connect to a backend: nothing of the request
// was sent, so another backend may be tried. http.Transport passes errors
// from DialContext through unchanged.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func isDialError(err error) bool {
	var d *dialError
	return errors.As(err, &d)
}

// ErrNoBackend is the sentinel of a request that found no backend to take
// it: every backend is unhealthy or ejected, or every one that is up stayed
// at max_conns for the whole queue timeout. The client gets 503 with
// Retry-After.
var ErrNoBackend = errors.New("upstream: no backend available")

// noBackendError is ErrNoBackend with the Retry-After to send.
type noBackendError struct {
	retryAfter time.Duration
	full       bool // backends are up but at max_conns
}

func (e *noBackendError) Error() string {
	if e.full {
		return "upstream: no backend available: all at max_conns for the queue timeout"
	}
	return "upstream: no backend available: all unhealthy or ejected"
}

func (e *noBackendError) Is(target error) bool { return target == ErrNoBackend }

// retryAfter is the Retry-After value (whole seconds, at least 1) for err,
// or "" if err is not a *noBackendError.
func retryAfter(err error) string {
	var nb *noBackendError
	if !errors.As(err, &nb) {
		return ""
	}
	return strconv.FormatInt(int64(max((nb.retryAfter+time.Second-1)/time.Second, 1)), 10)
}

// attemptError is the forwarder's final error: the last backend tried and
// what went wrong with it. Its text names the backend, so it goes to logs
// only, never to a client.
type attemptError struct {
	backend *Backend
	err     error
}

func (e *attemptError) Error() string { return "backend " + e.backend.name + ": " + e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// backendName is the backend an error is about, or "" if none was reached.
func backendName(err error) string {
	var a *attemptError
	if errors.As(err, &a) && a.backend != nil {
		return a.backend.name
	}
	return ""
}

// statusForError is the one place that maps a forwarding failure to the
// status the client (or the access log) sees:
//
//   - the client's context was canceled (it went away): 499;
//   - no backend could take the request (ErrNoBackend): 503 Service
//     Unavailable, with Retry-After;
//   - any timeout (dial, TLS handshake, response header, a context
//     deadline): 504 Gateway Timeout;
//   - everything else (connection refused, reset or unreachable, DNS, TLS
//     verification, EOF before the response header, a bad 101): 502.
func statusForError(ctx context.Context, err error) int {
	if errors.Is(ctx.Err(), context.Canceled) {
		return StatusClientClosedRequest
	}
	if errors.Is(err, ErrNoBackend) {
		return http.StatusServiceUnavailable
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// Error bodies: short, plain and free of addresses or Go error strings.
var (
	body499 = "499 Client Closed Request\n"
	body502 = "502 Bad Gateway\n"
	body504 = "504 Gateway Timeout\n"
	body503 = "503 Service Unavailable\n"
)

// writeError writes the plain-text error response for status. It must only
// be called before anything of the response was written.
func writeError(w http.ResponseWriter, status int) {
	var body string
	switch status {
	case StatusClientClosedRequest:
		body = body499
	case http.StatusBadGateway:
		body = body502
	case http.StatusGatewayTimeout:
		body = body504
	case http.StatusServiceUnavailable:
		body = body503
	default:
		body = strconv.Itoa(status) + " " + http.StatusText(status) + "\n"
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}
