// Package middleware owns the small, independent stages of Gatehouse's fixed
// request stack: panic recovery, request ids, access logging and security
// headers, rate limits and authentication, plus the per-route header operations
// (RouteHeaders) that package edge wraps around a route's action. Each stage
// is a Middleware; the order in which they run is fixed by package edge,
// never by configuration.
//
// Stages that change the response header do so when the final response
// header goes out (finalWriter, in requestid.go), never before the handler
// runs: a reverse proxy clears the header map after relaying each 1xx and
// then copies the backend's header in, so only then can a stage see what the
// backend sent and be sure its change is sent. Their writers keep Flush,
// Hijack and http.ResponseController working.
//
// Stages import no other Gatehouse package and never each other.
package middleware

import "net/http"

// Middleware wraps a handler with one stage of the stack.
type Middleware func(http.Handler) http.Handler

// Chain applies stages so that the first one listed runs first (outermost).
func Chain(h http.Handler, stages ...Middleware) http.Handler {
	for i := len(stages) - 1; i >= 0; i-- {
		h = stages[i](h)
	}
	return h
}

// plainError writes a short plain-text error such as "500 Internal Server Error\n".
// Bodies never carry Go error strings or internal addresses.
func plainError(w http.ResponseWriter, status int) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(statusLine(status)))
}

func statusLine(status int) string {
	return itoa(status) + " " + http.StatusText(status) + "\n"
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
