package middleware

import (
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
)

// Recover turns a panic in a later stage into a 500 (when nothing was written
// yet) and a log line with the stack. http.ErrAbortHandler is re-panicked so
// net/http aborts the connection silently, as it was meant to.
func Recover(log *slog.Logger) Middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tw := &trackWriter{ResponseWriter: w}
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				log.Error("panic while serving request",
					"panic", v, "method", r.Method, "host", r.Host, "path", r.URL.Path,
					"stack", string(debug.Stack()))
				if tw.wrote {
					panic(http.ErrAbortHandler) // headers are out: cut the connection
				}
				plainError(w, http.StatusInternalServerError)
			}()
			next.ServeHTTP(tw, r)
		})
	}
}

// trackWriter records whether the response header was sent.
type trackWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		t.wrote = true
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackWriter) Write(p []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(p)
}

// Unwrap lets http.NewResponseController reach Flush, Hijack and deadlines.
func (t *trackWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Flush is promoted explicitly because older code type-asserts http.Flusher.
func (t *trackWriter) Flush() {
	t.wrote = true
	_ = http.NewResponseController(t.ResponseWriter).Flush()
}
