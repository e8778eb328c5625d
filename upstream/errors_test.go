package upstream

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestStatusForError(t *testing.T) {
	t.Parallel()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want int
	}{
		{"connection refused", context.Background(), &attemptError{backend: &Backend{}, err: &dialError{err: refused}}, 502},
		{"dial timeout", context.Background(), &attemptError{backend: &Backend{}, err: &dialError{err: &net.OpError{Op: "dial", Err: timeoutErr{}}}}, 504},
		{"response header timeout", context.Background(), timeoutErr{}, 504},
		{"context deadline", context.Background(), fmt.Errorf("x: %w", context.DeadlineExceeded), 504},
		{"DNS failure", context.Background(), &net.DNSError{Err: "no such host", Name: "backend.invalid", IsNotFound: true}, 502},
		{"TLS verification", context.Background(), &tls509Err, 502},
		{"EOF before headers", context.Background(), io.EOF, 502},
		{"reset", context.Background(), syscall.ECONNRESET, 502},
		{"unexpected 101", context.Background(), errUnexpectedUpgrade, 502},
		{"client gone", canceled, context.Canceled, StatusClientClosedRequest},
		{"client gone during a timeout", canceled, timeoutErr{}, StatusClientClosedRequest},
		{"no backend", context.Background(), &noBackendError{retryAfter: 10 * time.Second}, 503},
		{"queue timeout", context.Background(), errQueueTimeout, 503},
		{"client gone while queued", canceled, context.Canceled, StatusClientClosedRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := statusForError(tc.ctx, tc.err); got != tc.want {
				t.Errorf("statusForError(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

var tls509Err = x509.UnknownAuthorityError{}

func TestDeadBackend502(t *testing.T) {
	t.Parallel()
	addr := deadAddr(t)
	log, logs := testLogger()
	h := NewProxy(newTestPool(t, nil, "http://"+addr), Options{Logger: log})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))

	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", rec.Code)
	}
	if got := rec.Body.String(); got != "502 Bad Gateway\n" {
		t.Errorf("body %q", got)
	}
	if strings.Contains(rec.Body.String(), addr) || strings.Contains(rec.Body.String(), "refused") {
		t.Errorf("body leaks details: %q", rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	var found bool
	for _, r := range logs.records(t) {
		if r["level"] == "WARN" && r["pool"] == "test" && strings.Contains(fmt.Sprint(r["backend"]), addr) &&
			strings.Contains(fmt.Sprint(r["error"]), "refused") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warn log with pool, backend and error: %s", logs)
	}
}

func TestResponseHeaderTimeout504(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // stall until the proxy gives up
	}))
	t.Cleanup(backend.Close)
	pool := newTestPool(t, func(u *config.Upstream) {
		u.Timeouts.ResponseHeader = config.Duration(200 * time.Millisecond)
	}, backend.URL)
	rec := httptest.NewRecorder()
	NewProxy(pool, quietOptions()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/slow", nil))
	if rec.Code != http.StatusGatewayTimeout || rec.Body.String() != "504 Gateway Timeout\n" {
		t.Fatalf("got %d %q, want 504", rec.Code, rec.Body)
	}
	if n := pool.Backends[0].Inflight(); n != 0 {
		t.Errorf("inflight %d after a timeout", n)
	}
}

func TestContextDeadline504(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(backend.Close)
	h := NewProxy(newTestPool(t, nil, backend.URL), quietOptions())
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx))
	if rec.Code != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", rec.Code)
	}
}

func TestFailover(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		echo(w, r)
	}))
	t.Cleanup(live.Close)
	log, logs := testLogger()
	pool := newTestPool(t, nil, "http://"+deadAddr(t), live.URL, "http://"+deadAddr(t))
	front := serveProxy(t, NewProxy(pool, Options{Logger: log}))

	body := strings.Repeat("payload-", 10000)
	tests := []struct {
		method string
		body   string
	}{
		{http.MethodGet, ""}, {http.MethodPost, body}, {http.MethodPost, body}, {http.MethodPut, "x"},
		{http.MethodGet, ""}, {http.MethodPost, body},
	}
	for i, tc := range tests { // sequential: each starts at the next backend
		var rd io.Reader
		if tc.body != "" {
			rd = strings.NewReader(tc.body)
		}
		req, _ := http.NewRequest(tc.method, front.URL+"/f", rd)
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusOK {
			res.Body.Close()
			t.Fatalf("request %d: status %d", i, res.StatusCode)
		}
		got := decodeSeen(t, res.Body)
		res.Body.Close()
		if got.Body != tc.body {
			t.Fatalf("request %d: backend got %d bytes, want %d", i, len(got.Body), len(tc.body))
		}
	}
	if hits.Load() != int64(len(tests)) {
		t.Errorf("live backend hit %d times, want %d", hits.Load(), len(tests))
	}
	for _, b := range pool.Backends {
		if n := b.Inflight(); n != 0 {
			t.Errorf("%s inflight %d", b, n)
		}
	}
	if !strings.Contains(logs.String(), "trying the next one") {
		t.Errorf("failover not logged: %s", logs)
	}
}

func TestNoFailoverAfterBodySent(t *testing.T) {
	t.Parallel()
	received := make(chan string, 1)
	// The first backend reads the whole body, then drops the connection.
	reader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		received <- string(b)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(reader.Close)
	var hits atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(other.Close)

	// A fresh pool picks its first backend first.
	h := NewProxy(newTestPool(t, nil, reader.URL, other.URL), quietOptions())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("once only")))
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", rec.Code)
	}
	if got := <-received; got != "once only" {
		t.Errorf("first backend got %q", got)
	}
	if hits.Load() != 0 {
		t.Errorf("request was replayed to another backend")
	}
}

// fakeRT is a RoundTripper that reads read bytes of the body, then fails
// with err (or answers 200 echoing the body when err is nil).
type fakeRT struct {
	read  int
	err   error
	calls atomic.Int64
	body  atomic.Value // string
}

func (f *fakeRT) RoundTrip(req *http.Request) (*http.Response, error) {
	f.calls.Add(1)
	if f.err != nil {
		if f.read > 0 {
			io.ReadFull(req.Body, make([]byte, f.read))
		}
		req.Body.Close()
		return nil, f.err
	}
	b, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	f.body.Store(string(b))
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, ContentLength: 0, Request: req}, nil
}

func TestFailoverOnlyWithUntouchedBody(t *testing.T) {
	t.Parallel()
	refused := &dialError{err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	tests := []struct {
		name       string
		first      *fakeRT
		wantStatus int
		wantSecond int64
	}{
		{"dial error, body untouched: next backend", &fakeRT{err: refused}, 200, 1},
		{"dial error after a read: no retry", &fakeRT{err: refused, read: 1}, 502, 0},
		{"other error: no retry", &fakeRT{err: io.ErrUnexpectedEOF}, 502, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := newTestPool(t, nil, "http://127.0.0.1:1", "http://127.0.0.1:2")
			second := &fakeRT{}
			pool.Backends[0].rt, pool.Backends[1].rt = tc.first, second
			rec := httptest.NewRecorder()
			NewProxy(pool, quietOptions()).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("the body")))
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d", rec.Code, tc.wantStatus)
			}
			if second.calls.Load() != tc.wantSecond {
				t.Fatalf("second backend called %d times, want %d", second.calls.Load(), tc.wantSecond)
			}
			if tc.wantSecond > 0 && second.body.Load() != "the body" {
				t.Errorf("second backend got body %q", second.body.Load())
			}
			for _, b := range pool.Backends {
				if n := b.Inflight(); n != 0 {
					t.Errorf("%s inflight %d", b, n)
				}
			}
		})
	}
}

func TestAttemptBodyDetach(t *testing.T) {
	t.Parallel()
	b := &attemptBody{r: strings.NewReader("abc")}
	if !b.detach() {
		t.Fatal("untouched body not reusable")
	}
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, errBodyDetached) {
		t.Fatalf("read after detach: %v", err)
	}
	b2 := &attemptBody{r: strings.NewReader("abc")}
	b2.Read(make([]byte, 1))
	if b2.detach() {
		t.Fatal("consumed body reported reusable")
	}
}

func TestClientGone499(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done() // released when the proxy cancels the backend request
	}))
	t.Cleanup(backend.Close)
	log, logs := testLogger()
	pool := newTestPool(t, nil, backend.URL)
	proxy := NewProxy(pool, Options{Logger: log})
	statuses := make(chan int, 1)
	front := serveProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		proxy.ServeHTTP(rec, r)
		statuses <- rec.status
	}))

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front.URL+"/wait", nil)
	errc := make(chan error, 1)
	go func() {
		res, err := front.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("canceled request succeeded")
	}
	if got := <-statuses; got != StatusClientClosedRequest {
		t.Fatalf("recorded status %d, want 499", got)
	}
	var info bool
	for _, r := range logs.records(t) {
		if r["level"] == "INFO" && r["status"] == float64(499) {
			info = true
		}
		if r["level"] == "WARN" {
			t.Errorf("client going away logged at warn: %v", r)
		}
	}
	if !info {
		t.Errorf("no info log for 499: %s", logs)
	}
	if n := pool.Backends[0].Inflight(); n != 0 {
		t.Errorf("inflight %d", n)
	}
}

// TestMidBodyFailureAborts checks that a backend failing after the header
// was relayed makes the proxy abort the client connection, not append an
// error page.
func TestMidBodyFailureAborts(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, strings.Repeat("partial ", 8<<10)) // past the proxy's write buffer
		rc := http.NewResponseController(w)
		rc.Flush()
		if conn, _, err := rc.Hijack(); err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(backend.Close)
	pool := newTestPool(t, nil, backend.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))

	res, err := front.Client().Get(front.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	b, err := io.ReadAll(res.Body)
	if err == nil {
		t.Fatalf("body read completed (%q); want the connection aborted", b)
	}
	if strings.Contains(string(b), "Bad Gateway") {
		t.Errorf("error page appended to a started body: %q", b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pool.Backends[0].Inflight() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("inflight stays %d", pool.Backends[0].Inflight())
		}
		time.Sleep(time.Millisecond) // polling with a deadline, not synchronisation
	}
}

func TestUnexpectedSwitchingProtocols502(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		brw.Flush()
	}))
	t.Cleanup(backend.Close)
	pool := newTestPool(t, nil, backend.URL)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "h2c") // not tunnelled: forwarded without Upgrade
	NewProxy(pool, quietOptions()).ServeHTTP(rec, req)
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", rec.Code)
	}
	if n := pool.Backends[0].Inflight(); n != 0 {
		t.Errorf("inflight %d", n)
	}
}
