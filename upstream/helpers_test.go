package upstream

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// seen is what echoBackend reports about the request it received.
type seen struct {
	Host    string
	URI     string
	Proto   string
	Header  http.Header
	Body    string
	Trailer http.Header
}

// echoBackend answers every request with a JSON description of it.
func echoBackend(t testing.TB) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(echo))
	t.Cleanup(srv.Close)
	return srv
}

func echo(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(seen{
		Host: r.Host, URI: r.RequestURI, Proto: r.Proto,
		Header: r.Header, Body: string(b), Trailer: r.Trailer,
	})
}

func decodeSeen(t testing.TB, body io.Reader) seen {
	t.Helper()
	var s seen
	if err := json.NewDecoder(body).Decode(&s); err != nil {
		t.Fatalf("decoding backend echo: %v", err)
	}
	return s
}

// upstreamConfig builds a config.Upstream named "test" over urls.
func upstreamConfig(t testing.TB, urls ...string) *config.Upstream {
	t.Helper()
	u := &config.Upstream{Name: "test"}
	for _, s := range urls {
		pu, err := url.Parse(s)
		if err != nil {
			t.Fatalf("parsing %q: %v", s, err)
		}
		u.Backends = append(u.Backends, &config.Backend{URL: pu, Weight: 1})
	}
	return u
}

// newTestPool builds a pool over urls; mod, if non-nil, edits the
// configuration first. The pool is closed when the test ends.
func newTestPool(t testing.TB, mod func(*config.Upstream), urls ...string) *Pool {
	t.Helper()
	u := upstreamConfig(t, urls...)
	if mod != nil {
		mod(u)
	}
	p, err := NewPool(u)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// serveProxy runs h behind a real server (closed when the test ends).
func serveProxy(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// deadAddr returns an address on which nothing listens any more.
func deadAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logRecords decodes the JSON log lines written so far.
func (l *logBuf) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader([]byte(l.String())))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("decoding log: %v", err)
		}
		out = append(out, m)
	}
	return out
}

func testLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func quietOptions() Options { return Options{Logger: slog.New(slog.DiscardHandler)} }

// statusRecorder remembers the final status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
