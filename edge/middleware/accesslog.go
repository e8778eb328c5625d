package middleware

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// Info is what later stages tell the access log about a request: the route
// that matched and the upstream pool it went to. The access log stage puts a
// fresh *Info in the request context; later stages fill it in through
// InfoFrom. It is owned by one request and needs no locking.
type Info struct {
	Site     string // the site's first host ("" when no site matched)
	Route    string
	Upstream string
}

// Observer is told about every request the access log stage sees (for
// metrics): Start when it arrives, Done when its response is complete, with
// the final status and the time taken. It must be safe for concurrent use.
type Observer interface {
	Start()
	Done(r *http.Request, info *Info, status int, d time.Duration)
}

type infoKey struct{}

// InfoFrom returns the request's *Info, or a throwaway one when the access
// log stage is not in the stack (so callers never check for nil).
func InfoFrom(ctx context.Context) *Info {
	if in, ok := ctx.Value(infoKey{}).(*Info); ok {
		return in
	}
	return &Info{}
}

// AccessLog logs one JSON line per request at info level, after the response
// is complete: client_ip, method, host, path, status, bytes, duration_ms,
// route, upstream, request_id and proto. clientIP says who the client is
// (through trusted proxies); nil means the TCP peer. obs, when not nil, is
// told about each request too (metrics share the log's view of status and
// duration).
func AccessLog(log *slog.Logger, clientIP func(*http.Request) string, obs Observer) Middleware {
	if clientIP == nil {
		clientIP = peerIP
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			info := &Info{}
			if obs != nil {
				obs.Start()
			}
			lw := &logWriter{ResponseWriter: w}
			// Read these before the handler runs: later stages may rewrite the URL.
			method, host, path, proto := r.Method, r.Host, r.URL.Path, r.Proto
			r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
			completed := false
			defer func() { // runs while a panic unwinds too
				status := lw.status
				switch {
				case status != 0:
				case completed:
					status = http.StatusOK
				default: // panicked before writing: Recover (outside us) answers 500
					status = http.StatusInternalServerError
				}
				if obs != nil {
					obs.Done(r, info, status, time.Since(start))
				}
				if !log.Enabled(r.Context(), slog.LevelInfo) {
					return // --log-level warn: no line, and none of its arguments built
				}
				log.LogAttrs(r.Context(), slog.LevelInfo, "request",
					slog.String("client_ip", clientIP(r)),
					slog.String("method", method),
					slog.String("host", host),
					slog.String("path", path),
					slog.Int("status", status),
					slog.Int64("bytes", lw.bytes),
					slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
					slog.String("route", info.Route),
					slog.String("upstream", info.Upstream),
					slog.String("request_id", r.Header.Get(RequestIDHeader)),
					slog.String("proto", proto),
				)
			}()
			next.ServeHTTP(lw, r)
			completed = true
		})
	}
}

func peerIP(r *http.Request) string {
	host := r.RemoteAddr
	for i := len(host) - 1; i >= 0; i-- {
		if host[i] == ':' {
			host = host[:i]
			break
		}
	}
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host
}

// logWriter records the final status and the body bytes written.
type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (l *logWriter) WriteHeader(code int) {
	if l.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		l.status = code
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *logWriter) Write(p []byte) (int, error) {
	if l.status == 0 {
		l.status = http.StatusOK
	}
	n, err := l.ResponseWriter.Write(p)
	l.bytes += int64(n)
	return n, err
}

// Unwrap lets http.NewResponseController reach Flush, Hijack and deadlines.
func (l *logWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

// Flush is promoted explicitly because older code type-asserts http.Flusher.
func (l *logWriter) Flush() {
	if l.status == 0 {
		l.status = http.StatusOK
	}
	_ = http.NewResponseController(l.ResponseWriter).Flush()
}
