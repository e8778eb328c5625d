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
			iw := &idWriter{ResponseWriter: w, id: id}
			// Deferred so that a panic before anything was written still
			// leaves the id for Recover's 500.
			defer iw.setID()
			next.ServeHTTP(iw, r)
		})
	}
}

// idWriter puts the request id on the final response header. It is used by
// one request; a 1xx written from a reverse proxy's transport goroutine does
// not touch its state.
type idWriter struct {
	http.ResponseWriter
	id   string
	done bool // the id has been set on the final header
}

func (w *idWriter) setID() {
	if !w.done {
		w.done = true
		w.ResponseWriter.Header().Set(RequestIDHeader, w.id)
	}
}

func (w *idWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.setID()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *idWriter) Write(p []byte) (int, error) {
	w.setID()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.NewResponseController reach deadlines and full duplex.
func (w *idWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush sends the header (with the id) and flushes. It is explicit because
// older code type-asserts http.Flusher.
func (w *idWriter) Flush() {
	w.setID()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack sets the id first: code that writes the header map itself after
// hijacking (httputil.ReverseProxy relaying a 101) then sends it too.
func (w *idWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.setID()
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
