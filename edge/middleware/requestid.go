package middleware

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
)

// RequestIDHeader carries the request id to the backend and back to the client.
const RequestIDHeader = "X-Request-Id"

// RequestID makes sure every request has an id: a well-formed incoming
// X-Request-Id (1–64 characters of [A-Za-z0-9._-]) is kept, anything else is
// replaced by 16 random hex digits. The id is set on the request (so backends
// and the access log see it) and on the response.
//
// The response header is set (with Set, replacing any value a backend echoed)
// only when the final response header goes out: at the first WriteHeader
// with a final status (>= 200, or 101), the first Write or Flush, a Hijack,
// or when the handler returns (or panics) without having written. Setting it
// earlier would not survive: a reverse proxy clears the header map after
// relaying each 1xx and adds the backend's headers to it. 1xx responses pass
// through untouched.
func RequestID() Middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get(RequestIDHeader)
			if !validRequestID(id) {
				id = newRequestID()
				r.Header.Set(RequestIDHeader, id)
			}
			fw := SetOnFinal(w, RequestIDHeader, id)
			// Deferred so that a panic before anything was written still
			// leaves the id for Recover's 500.
			defer fw.set()
			next.ServeHTTP(fw, r)
		})
	}
}

// SetOnFinal returns a writer that sets header key to value (with Set,
// replacing whatever a backend sent) when the final response header goes
// out: at the first WriteHeader with a final status (>= 200, or 101), the
// first Write or Flush, or a Hijack. 1xx responses pass through untouched:
// a reverse proxy clears the header map after relaying each 1xx, so a value
// set before the handler runs would be lost. It is used by one request.
func SetOnFinal(w http.ResponseWriter, key, value string) *FinalHeaderWriter {
	fw := &FinalHeaderWriter{key: key, value: value}
	fw.finalWriter = finalWriter{ResponseWriter: w, hook: fw}
	return fw
}

// FinalHeaderWriter is the writer SetOnFinal returns. Its WriteHeader,
// Write, Flush, Hijack and Unwrap are those of every final-header writer in
// this package (see finalWriter).
type FinalHeaderWriter struct {
	finalWriter
	key, value string
}

func (w *FinalHeaderWriter) final(h http.Header, _ int) { h.Set(w.key, w.value) }

// set sets the header now unless it already has been (RequestID defers it
// so that a handler that never writes, or panics, still gets the id).
func (w *FinalHeaderWriter) set() { w.finish(http.StatusOK) }

// finalHook is what a finalWriter runs, once, on the header map of the
// final response, just before it goes out. status is the final status, 200
// when the handler writes or flushes (or returns) without WriteHeader, and
// 101 for a Hijack that came before any WriteHeader: a hijack is taken to be
// a protocol switch. A hook is shared by the requests of a stage: it must be
// safe for concurrent use and keep no per-request state.
type finalHook interface {
	final(h http.Header, status int)
}

// finalWriter runs its hook when the final response header goes out: at the
// first WriteHeader with a final status (>= 200, or 101), the first Write or
// Flush, or a Hijack. 1xx responses pass through untouched: a reverse proxy
// clears the header map after relaying each 1xx and then adds the backend's
// header to it, so a change made earlier would be lost, and one made at a
// 1xx would leak into the informational response. Stages defer finish so
// that a handler that returns (or panics) without writing is covered too.
// It belongs to one request.
type finalWriter struct {
	http.ResponseWriter
	hook finalHook
	done bool // the hook has run
}

// finish runs the hook unless it has run.
func (w *finalWriter) finish(status int) {
	if !w.done {
		w.done = true
		w.hook.final(w.ResponseWriter.Header(), status)
	}
}

// WriteHeader runs the hook before a final status.
func (w *finalWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.finish(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *finalWriter) Write(p []byte) (int, error) {
	w.finish(http.StatusOK)
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.NewResponseController reach deadlines and full duplex.
func (w *finalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush sends the header and flushes. It is explicit because older code
// type-asserts http.Flusher.
func (w *finalWriter) Flush() {
	w.finish(http.StatusOK)
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack runs the hook first (as for a 101, unless a final WriteHeader came
// before): code that writes the header map itself after hijacking
// (httputil.ReverseProxy relaying a 101) then sends the change too. What
// such code adds to the map after Hijack (ReverseProxy copies the backend's
// 101 header in then) is beyond reach.
func (w *finalWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.finish(http.StatusSwitchingProtocols)
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}
