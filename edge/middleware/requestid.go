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
	return &FinalHeaderWriter{ResponseWriter: w, key: key, value: value}
}

// FinalHeaderWriter is the writer SetOnFinal returns.
type FinalHeaderWriter struct {
	http.ResponseWriter
	key, value string
	done       bool // the header has been set on the final response
}

func (w *FinalHeaderWriter) set() {
	if !w.done {
		w.done = true
		w.ResponseWriter.Header().Set(w.key, w.value)
	}
}

// WriteHeader sets the header before a final status.
func (w *FinalHeaderWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.set()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *FinalHeaderWriter) Write(p []byte) (int, error) {
	w.set()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.NewResponseController reach deadlines and full duplex.
func (w *FinalHeaderWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush sends the header and flushes. It is explicit because older code
// type-asserts http.Flusher.
func (w *FinalHeaderWriter) Flush() {
	w.set()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack sets the header first: code that writes the header map itself after
// hijacking (httputil.ReverseProxy relaying a 101) then sends it too.
func (w *FinalHeaderWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.set()
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
