package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// ---- helpers ----

// trackedServer is an httptest server that reports its connections: opened
// counts StateNew, closed gets one send per connection that closed.
type trackedServer struct {
	*httptest.Server
	opened atomic.Int64
	closed chan struct{}
}

func newTrackedServer(t testing.TB, h http.HandlerFunc) *trackedServer {
	t.Helper()
	ts := &trackedServer{closed: make(chan struct{}, 1024)}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			ts.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			ts.closed <- struct{}{}
		}
	}
	srv.Start()
	ts.Server = srv
	t.Cleanup(srv.Close)
	return ts
}

// waitClosed waits until the server has seen n more connections close.
func (ts *trackedServer) waitClosed(t testing.TB, n int) {
	t.Helper()
	timeout := time.After(2 * time.Second)
	for i := range n {
		select {
		case <-ts.closed:
		case <-timeout:
			t.Fatalf("server saw %d of %d connections close", i, n)
		}
	}
}

// noneClosed fails if the server saw a connection close.
func (ts *trackedServer) noneClosed(t testing.TB) {
	t.Helper()
	select {
	case <-ts.closed:
		t.Fatal("server saw a connection close")
	default:
	}
}

// rawBackend is a hand-written HTTP/1.1 backend on a bare listener, for
// answers net/http's server would not give. Each accepted connection
// (numbered from 1) is handed to serve; when serve returns the connection
// is closed and its number sent on done.
type rawBackend struct {
	URL      string
	accepted atomic.Int64
	done     chan int
}

func newRawBackend(t testing.TB, serve func(n int, c net.Conn, br *bufio.Reader)) *rawBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &rawBackend{URL: "http://" + l.Addr().String(), done: make(chan int, 1024)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n := int(rb.accepted.Add(1))
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				serve(n, c, bufio.NewReader(c))
				c.Close()
				rb.done <- n
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return rb
}

// waitDone waits for connection n's serve to return (the client closed it,
// or serve hung up).
func (rb *rawBackend) waitDone(t testing.TB, n int) {
	t.Helper()
	select {
	case got := <-rb.done:
		if got != n {
			t.Fatalf("connection %d ended, want %d", got, n)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("connection %d still open", n)
	}
}

// readReq reads one request (and its body) from br.
func readReq(br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err == nil
}

const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// newFast builds a fastH1 whose dials (through the standard transport's
// dialer, so failures are *dialError) are counted.
func newFast(t testing.TB, hdrTimeout, idle time.Duration, maxIdle int) (*fastH1, *atomic.Int64) {
	t.Helper()
	fb := newTransport(config.Timeouts{}, nil, false)
	var dials atomic.Int64
	f := newFastH1(fb, func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return fb.DialContext(ctx, network, addr)
	}, hdrTimeout, idle, maxIdle)
	t.Cleanup(f.CloseIdleConnections)
	return f, &dials
}

// rtDo sends a request through rt and reads the whole body.
func rtDo(rt http.RoundTripper, req *http.Request) (*http.Response, string, error) {
	res, err := rt.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res, string(b), err
}

// rtGet sends a GET through rt and fails the test on any error.
func rtGet(t testing.TB, rt http.RoundTripper, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, body, err := rtDo(rt, req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res, body
}

// rtGetErr sends a GET through rt with ctx and returns the error.
func rtGetErr(ctx context.Context, rt http.RoundTripper, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	_, _, err = rtDo(rt, req)
	return err
}

// idleCount is the number of pooled connections for key.
func (t *fastH1) idleCount(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.idle[key])
}

func hostOf(u string) string { return strings.TrimPrefix(u, "http://") }

// hookConn runs hooks after reads, writes and SetDeadline calls.
type hookConn struct {
	net.Conn
	afterRead   func(n int)
	afterWrite  func()
	setDeadline func(time.Time)
}

func (c *hookConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.afterRead != nil {
		c.afterRead(n)
	}
	return n, err
}

func (c *hookConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.afterWrite != nil {
		c.afterWrite()
	}
	return n, err
}

func (c *hookConn) SetDeadline(d time.Time) error {
	err := c.Conn.SetDeadline(d)
	if c.setDeadline != nil {
		c.setDeadline(d)
	}
	return err
}

// ---- tests ----

func TestFastH1ReusesOneConnection(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "body of "+r.URL.Path)
	})
	f, dials := newFast(t, time.Second, time.Minute, 8)
	for i := range 50 {
		path := fmt.Sprintf("/r%d", i)
		res, body := rtGet(t, f, ts.URL+path)
		if res.StatusCode != 200 || body != "body of "+path {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	if n := ts.opened.Load(); n != 1 {
		t.Errorf("server saw %d connections, want 1", n)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
	if n := f.idleCount(hostOf(ts.URL)); n != 1 {
		t.Errorf("%d idle connections, want 1", n)
	}
}

func TestFastH1Concurrent(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	const workers, each = 8, 25
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				path := fmt.Sprintf("/w%d/%d", w, i)
				req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
				_, body, err := rtDo(f, req)
				if err == nil && body != path {
					err = fmt.Errorf("body %q, want %q", body, path)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := ts.opened.Load(); n > workers {
		t.Errorf("%d connections for %d workers", n, workers)
	}
}

func TestFastH1RetriesIdleConnClosedByBackend(t *testing.T) {
	// Every connection answers one keep-alive response, then hangs up.
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if readReq(br) {
			io.WriteString(c, okResponse)
		}
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	for i := 1; i <= 3; i++ {
		if _, body := rtGet(t, f, rb.URL); body != "ok" {
			t.Fatalf("request %d: body %q", i, body)
		}
		rb.waitDone(t, i) // the backend closed the pooled connection
	}
	if n := rb.accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func TestFastH1FreshConnClosedBeforeResponse(t *testing.T) {
	// Every connection reads the request and hangs up without answering.
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) { readReq(br) })
	f, _ := newFast(t, time.Second, time.Minute, 8)
	err := rtGetErr(context.Background(), f, rb.URL)
	if err == nil {
		t.Fatal("no error from a backend that hung up")
	}
	if isDialError(err) {
		t.Errorf("error %v is a dial error", err)
	}
	if n := rb.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (no retry on a fresh connection)", n)
	}
}

func TestFastH1ReusedThenFreshClosedStops(t *testing.T) {
	// Connection 1 answers once, then hangs up on the next request; every
	// later connection hangs up at once: one retry, then the error.
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if readReq(br) && n == 1 {
			io.WriteString(c, okResponse)
			readReq(br)
		}
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	rtGet(t, f, rb.URL)
	if err := rtGetErr(context.Background(), f, rb.URL); err == nil {
		t.Fatal("no error")
	}
	if n := rb.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// hangAfter returns a raw backend that answers the first `answered`
// requests it receives (over all connections) and never any later one; a
// connection that got an unanswered request waits for the client to close.
func hangAfter(t testing.TB, answered int64) *rawBackend {
	var reqs atomic.Int64
	return newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		for readReq(br) {
			if reqs.Add(1) > answered {
				io.Copy(io.Discard, br)
				return
			}
			io.WriteString(c, okResponse)
		}
	})
}

func TestFastH1ResponseHeaderTimeout(t *testing.T) {
	const timeout = 150 * time.Millisecond
	check := func(t *testing.T, err error, elapsed time.Duration) {
		t.Helper()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("error %v, want a net.Error with Timeout", err)
		}
		if elapsed < timeout || elapsed > timeout+time.Second {
			t.Errorf("took %v, timeout %v", elapsed, timeout)
		}
	}
	t.Run("fresh", func(t *testing.T) {
		rb := hangAfter(t, 0)
		f, _ := newFast(t, timeout, time.Minute, 8)
		start := time.Now()
		err := rtGetErr(context.Background(), f, rb.URL)
		check(t, err, time.Since(start))
		rb.waitDone(t, 1) // the timed-out connection was closed
		if n := f.idleCount(hostOf(rb.URL)); n != 0 {
			t.Errorf("%d idle connections", n)
		}
	})
	t.Run("reused", func(t *testing.T) {
		rb := hangAfter(t, 1)
		f, _ := newFast(t, timeout, time.Minute, 8)
		rtGet(t, f, rb.URL)
		start := time.Now()
		err := rtGetErr(context.Background(), f, rb.URL)
		check(t, err, time.Since(start))
		rb.waitDone(t, 1)
		// A backend that got the request and is slow is not sent it again.
		if n := rb.accepted.Load(); n != 1 {
			t.Errorf("%d connections, want 1 (a header timeout is not retried)", n)
		}
	})
}

func TestFastH1ContextCancel(t *testing.T) {
	var block atomic.Bool
	arrived := make(chan struct{}, 1)
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		if block.Load() {
			arrived <- struct{}{}
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "ok")
	})
	f, dials := newFast(t, 10*time.Second, time.Minute, 8)
	rtGet(t, f, ts.URL) // a pooled connection
	block.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rtGetErr(ctx, f, ts.URL) }()
	<-arrived
	start := time.Now()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("returned %v after the cancellation", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip did not return after the cancellation")
	}
	ts.waitClosed(t, 1) // the cancelled connection
	block.Store(false)
	if _, body := rtGet(t, f, ts.URL); body != "ok" {
		t.Errorf("body %q", body)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (a new connection after the cancellation)", n)
	}
}

// A cancellation that lands after the request was written must not be
// undone by the header deadline set next.
func TestFastH1CancelAfterWriteNotDelayedByHeaderTimeout(t *testing.T) {
	rb := hangAfter(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fb := newTransport(config.Timeouts{}, nil, false)
	f := newFastH1(fb, func(ctx2 context.Context, network, addr string) (net.Conn, error) {
		c, err := fb.DialContext(ctx2, network, addr)
		if err != nil {
			return nil, err
		}
		fired := make(chan struct{})
		var once sync.Once
		return &hookConn{Conn: c,
			setDeadline: func(d time.Time) {
				if d.Equal(aLongTimeAgo) {
					once.Do(func() { close(fired) })
				}
			},
			afterWrite: func() {
				cancel()
				select { // let the cancellation's deadline land first
				case <-fired:
				case <-time.After(2 * time.Second):
				}
			},
		}, nil
	}, 3*time.Second, time.Minute, 8)
	t.Cleanup(f.CloseIdleConnections)
	start := time.Now()
	err := rtGetErr(ctx, f, rb.URL)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v: the header timeout overrode the cancellation", d)
	}
}

// A cancellation that lands while the header is parsed must not be undone
// when the header deadline is cleared: the body read fails at once.
func TestFastH1CancelDuringHeaderStopsBody(t *testing.T) {
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if readReq(br) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
			io.Copy(io.Discard, br) // then stall until the client hangs up
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var conn net.Conn // set by the dial, before RoundTrip returns
	fb := newTransport(config.Timeouts{}, nil, false)
	f := newFastH1(fb, func(ctx2 context.Context, network, addr string) (net.Conn, error) {
		c, err := fb.DialContext(ctx2, network, addr)
		if err != nil {
			return nil, err
		}
		fired := make(chan struct{})
		var once sync.Once
		var reads int
		conn = c
		return &hookConn{Conn: c,
			setDeadline: func(d time.Time) {
				if d.Equal(aLongTimeAgo) {
					once.Do(func() { close(fired) })
				}
			},
			afterRead: func(n int) {
				if reads++; reads == 1 && n > 0 {
					cancel()
					select {
					case <-fired:
					case <-time.After(2 * time.Second):
					}
				}
			},
		}, nil
	}, 3*time.Second, time.Minute, 8)
	t.Cleanup(f.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rb.URL, nil)
	res, err := f.RoundTrip(req)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		return
	}
	readc := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(res.Body)
		readc <- err
	}()
	select {
	case err := <-readc:
		if err == nil {
			t.Error("body read to the end after the cancellation")
		}
	case <-time.After(time.Second):
		t.Error("body read still blocked a second after the cancellation")
		conn.Close() // unblock the read
		<-readc
	}
	res.Body.Close()
}

func TestFastH1ContextCancelDuringBody(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		io.WriteString(w, "part")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
	res, err := f.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(res.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Error("no error reading the body after the cancellation")
	}
	res.Body.Close()
	ts.waitClosed(t, 1)
	if n := f.idleCount(hostOf(ts.URL)); n != 0 {
		t.Errorf("%d idle connections", n)
	}
}

func TestFastH1BodyCloseBeforeEOF(t *testing.T) {
	big := strings.Repeat("x", 256<<10)
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big)
	})
	f, dials := newFast(t, time.Second, time.Minute, 8)

	// Read to EOF: reused.
	for range 3 {
		if _, body := rtGet(t, f, ts.URL); body != big {
			t.Fatalf("body of %d bytes", len(body))
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials after complete reads, want 1", n)
	}
	ts.noneClosed(t)

	// Closed early: that connection is closed.
	req, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
	res, err := f.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if _, err := res.Body.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
	ts.waitClosed(t, 1)
	if n := f.idleCount(hostOf(ts.URL)); n != 0 {
		t.Errorf("%d idle connections after an early close", n)
	}
	rtGet(t, f, ts.URL)
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
}

func TestFastH1ChunkedTrailers(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(200)
		io.WriteString(w, "chunk1")
		http.NewResponseController(w).Flush()
		io.WriteString(w, "chunk2")
		w.Header().Set("X-Sum", "42")
	})
	f, dials := newFast(t, time.Second, time.Minute, 8)
	for range 2 {
		res, body := rtGet(t, f, ts.URL)
		if body != "chunk1chunk2" {
			t.Errorf("body %q", body)
		}
		if len(res.TransferEncoding) == 0 || res.TransferEncoding[0] != "chunked" {
			t.Errorf("transfer encoding %v, want chunked", res.TransferEncoding)
		}
		if got := res.Trailer.Get("X-Sum"); got != "42" {
			t.Errorf("trailer X-Sum %q, want 42", got)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
}

func TestFastH1NoBodyResponses(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		case "/empty":
			w.Header().Set("Content-Length", "0")
		default:
			io.WriteString(w, "hello")
		}
	})
	f, dials := newFast(t, time.Second, time.Minute, 8)
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{http.MethodHead, "/", 200},
		{http.MethodGet, "/204", 204},
		{http.MethodGet, "/304", 304},
		{http.MethodGet, "/empty", 200},
		{http.MethodOptions, "/204", 204},
		{http.MethodHead, "/", 200},
		{http.MethodGet, "/", 200}, // the connection is still in sync
	} {
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, nil)
		res, err := f.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		want := ""
		if tc.method == http.MethodGet && tc.path == "/" {
			want = "hello"
		} else if res.Body != http.NoBody {
			t.Errorf("%s %s: body %T, want http.NoBody", tc.method, tc.path, res.Body)
		}
		if err != nil || string(b) != want || res.StatusCode != tc.code {
			t.Errorf("%s %s: %d %q %v", tc.method, tc.path, res.StatusCode, b, err)
		}
		if tc.method == http.MethodHead && res.ContentLength != 5 {
			t.Errorf("HEAD: Content-Length %d, want 5", res.ContentLength)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
}

func TestFastH1EarlyHints(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	f, dials := newFast(t, time.Second, time.Minute, 8)
	var codes []int
	var links []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			codes = append(codes, code)
			links = append(links, h.Get("Link"))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
	res, body, err := rtDo(f, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || body != "final" {
		t.Errorf("final response %d %q", res.StatusCode, body)
	}
	if len(codes) != 1 || codes[0] != 103 || links[0] != "</style.css>; rel=preload; as=style" {
		t.Errorf("Got1xxResponse calls %v %q", codes, links)
	}

	// Without a trace the 103 is skipped; a trace error fails the request.
	rtGet(t, f, ts.URL)
	boom := errors.New("boom")
	ctx = httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error { return boom },
	})
	if err := rtGetErr(ctx, f, ts.URL); !errors.Is(err, boom) {
		t.Errorf("error %v, want the trace's", err)
	}
	ts.waitClosed(t, 1)
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials before the failed one, want 1", n)
	}
}

func TestFastH1UnexpectedSwitchingProtocols(t *testing.T) {
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if readReq(br) {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
			io.Copy(io.Discard, br)
		}
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	if err := rtGetErr(context.Background(), f, rb.URL); !errors.Is(err, errUnexpectedUpgrade) {
		t.Errorf("error %v, want errUnexpectedUpgrade", err)
	}
	rb.waitDone(t, 1)
	if n := rb.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestFastH1Fallback(t *testing.T) {
	plain := echoBackend(t)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(echo))
	t.Cleanup(tlsSrv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(tlsSrv.Certificate())

	newReq := func(method, url string, body io.Reader, mod func(*http.Request)) func() *http.Request {
		return func() *http.Request {
			req, err := http.NewRequest(method, url, body)
			if err != nil {
				t.Fatal(err)
			}
			if mod != nil {
				mod(req)
			}
			return req
		}
	}
	for _, tc := range []struct {
		name string
		req  func() *http.Request
		body string
	}{
		{"POST with body", newReq(http.MethodPost, plain.URL, strings.NewReader("payload"), nil), "payload"},
		{"DELETE", newReq(http.MethodDelete, plain.URL, nil, nil), ""},
		{"GET with body", newReq(http.MethodGet, plain.URL, strings.NewReader("x"), nil), "x"},
		{"GET with Upgrade", newReq(http.MethodGet, plain.URL, nil, func(r *http.Request) {
			r.Header.Set("Upgrade", "foo")
		}), ""},
		{"GET with Expect", newReq(http.MethodGet, plain.URL, nil, func(r *http.Request) {
			r.Header.Set("Expect", "100-continue")
		}), ""},
		{"GET with Te", newReq(http.MethodGet, plain.URL, nil, func(r *http.Request) {
			r.Header.Set("Te", "trailers")
		}), ""},
		{"GET with trailer", newReq(http.MethodGet, plain.URL, nil, func(r *http.Request) {
			r.Trailer = http.Header{"X-T": nil}
		}), ""},
		{"GET with Close", newReq(http.MethodGet, plain.URL, nil, func(r *http.Request) { r.Close = true }), ""},
		{"https GET", newReq(http.MethodGet, tlsSrv.URL, nil, nil), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newTransport(config.Timeouts{}, &tls.Config{RootCAs: roots}, false)
			fbDial := fb.DialContext
			var fbDials, fastDials atomic.Int64
			fb.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				fbDials.Add(1)
				return fbDial(ctx, network, addr)
			}
			f := newFastH1(fb, func(ctx context.Context, network, addr string) (net.Conn, error) {
				fastDials.Add(1)
				return fbDial(ctx, network, addr)
			}, time.Second, time.Minute, 8)
			defer f.CloseIdleConnections()
			res, body, err := rtDo(f, tc.req())
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			if s := decodeSeen(t, strings.NewReader(body)); s.Body != tc.body {
				t.Errorf("backend got body %q, want %q", s.Body, tc.body)
			}
			if fbDials.Load() != 1 || fastDials.Load() != 0 {
				t.Errorf("fallback dials %d, fast dials %d; want 1, 0", fbDials.Load(), fastDials.Load())
			}
		})
	}
}

func TestFastH1IdleTimeout(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	f, dials := newFast(t, 5*time.Second, 10*time.Second, 8)
	clk := newFakeClock()
	f.now = func() time.Time { return time.Unix(0, clk.now()) }

	rtGet(t, f, ts.URL)
	clk.advance(9 * time.Second) // within the idle timeout
	rtGet(t, f, ts.URL)
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1 (reused within the idle timeout)", n)
	}
	clk.advance(11 * time.Second) // past it
	rtGet(t, f, ts.URL)
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (a stale connection is not reused)", n)
	}
	ts.waitClosed(t, 1)
	if n := f.idleCount(hostOf(ts.URL)); n != 1 {
		t.Errorf("%d idle connections, want 1", n)
	}
}

// Older idle connections are dropped when they expire even while a newer
// one is in use.
func TestFastH1IdleTimeoutPrunesOlder(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	f, dials := newFast(t, 5*time.Second, 10*time.Second, 8)
	clk := newFakeClock()
	f.now = func() time.Time { return time.Unix(0, clk.now()) }
	key := hostOf(ts.URL)

	// Two connections: A returned at T, B at T+6s.
	reqA, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
	resA, err := f.RoundTrip(reqA)
	if err != nil {
		t.Fatal(err)
	}
	reqB, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
	resB, err := f.RoundTrip(reqB)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resA.Body)
	resA.Body.Close()
	clk.advance(6 * time.Second)
	io.Copy(io.Discard, resB.Body)
	resB.Body.Close()
	if n := f.idleCount(key); n != 2 {
		t.Fatalf("%d idle connections, want 2", n)
	}
	clk.advance(6 * time.Second) // A idle 12s, B 6s
	rtGet(t, f, ts.URL)
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
	if n := f.idleCount(key); n != 1 {
		t.Errorf("%d idle connections, want 1 (the expired one dropped)", n)
	}
	ts.waitClosed(t, 1)
}

func TestFastH1MaxIdle(t *testing.T) {
	const conc = 5
	arrived := make(chan struct{}, conc)
	release := make(chan struct{})
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	})
	f, _ := newFast(t, 5*time.Second, time.Minute, 2)
	errs := make(chan error, conc)
	for range conc {
		go func() { errs <- rtGetErr(context.Background(), f, ts.URL) }()
	}
	for range conc {
		<-arrived
	}
	close(release)
	for range conc {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	ts.waitClosed(t, conc-2)
	if n := f.idleCount(hostOf(ts.URL)); n != 2 {
		t.Errorf("%d idle connections, want 2", n)
	}
	if n := ts.opened.Load(); n != conc {
		t.Errorf("%d connections, want %d", n, conc)
	}
	ts.noneClosed(t)
}

func TestFastH1NotReused(t *testing.T) {
	for _, tc := range []struct{ name, resp string }{
		{"extra bytes", okResponse + "GARBAGE"},
		{"Connection: close", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{"chunked with extra bytes", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The backend keeps each connection open after answering: the
			// client must close it.
			rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
				if readReq(br) {
					io.WriteString(c, tc.resp)
					io.Copy(io.Discard, br)
				}
			})
			f, _ := newFast(t, time.Second, time.Minute, 8)
			for i := 1; i <= 2; i++ {
				if _, body := rtGet(t, f, rb.URL); body != "ok" {
					t.Fatalf("body %q", body)
				}
				rb.waitDone(t, i)
			}
			if n := rb.accepted.Load(); n != 2 {
				t.Errorf("%d connections, want 2", n)
			}
		})
	}
}

func TestFastH1CloseIdleConnections(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	f, dials := newFast(t, time.Second, time.Minute, 8)
	rtGet(t, f, ts.URL)
	f.CloseIdleConnections()
	ts.waitClosed(t, 1)
	rtGet(t, f, ts.URL)
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
	ts.waitClosed(t, 1) // returned after the close: closed, not pooled
	if n := f.idleCount(hostOf(ts.URL)); n != 0 {
		t.Errorf("%d idle connections after CloseIdleConnections", n)
	}
}

func TestFastH1DialError(t *testing.T) {
	f, _ := newFast(t, time.Second, time.Minute, 8)
	err := rtGetErr(context.Background(), f, "http://"+deadAddr(t))
	if err == nil || !isDialError(err) {
		t.Errorf("error %v (%T), want a *dialError", err, err)
	}
}

// A backend URL without a port dials port 80, as the standard Transport does.
func TestFastH1DefaultPort(t *testing.T) {
	ts := newTrackedServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Host) })
	var addrs []string
	var mu sync.Mutex
	fb := newTransport(config.Timeouts{}, nil, false)
	f := newFastH1(fb, func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		addrs = append(addrs, addr)
		mu.Unlock()
		return fb.DialContext(ctx, network, ts.Listener.Addr().String())
	}, time.Second, time.Minute, 8)
	t.Cleanup(f.CloseIdleConnections)
	for range 2 {
		if _, body := rtGet(t, f, "http://backend.test"); body != "backend.test" {
			t.Errorf("Host %q", body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(addrs) != 1 || addrs[0] != "backend.test:80" {
		t.Errorf("dialled %q, want one dial of backend.test:80", addrs)
	}
}

// ---- benchmarks ----

func benchGet(b *testing.B, rt http.RoundTripper) {
	body := strings.Repeat("b", 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	b.Cleanup(srv.Close)
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		res, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil || n != 100 {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
}

func BenchmarkFastH1(b *testing.B) {
	fb := newTransport(config.Timeouts{}, nil, false)
	f := newFastH1(fb, fb.DialContext, defaultResponseHeaderTimeout, defaultIdleTimeout, maxIdleConnsPerHost)
	b.Cleanup(f.CloseIdleConnections)
	benchGet(b, f)
}

func BenchmarkStdTransport(b *testing.B) {
	tr := newTransport(config.Timeouts{}, nil, false)
	b.Cleanup(tr.CloseIdleConnections)
	benchGet(b, tr)
}

// A backend that answers 408 on a keep-alive connection it is closing for
// idleness never saw the request: it is sent again on a new connection.
func TestFastH1Retries408OnReusedConn(t *testing.T) {
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if n == 1 {
			if readReq(br) {
				io.WriteString(c, okResponse)
			}
			if readReq(br) { // the second request on the same connection
				io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}
			return
		}
		for readReq(br) {
			io.WriteString(c, okResponse)
		}
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	for i := 0; i < 2; i++ {
		res, body := rtGet(t, f, rb.URL)
		if res.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q, want 200 ok", i, res.StatusCode, body)
		}
	}
	if n := rb.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the 408 one and a fresh one)", n)
	}
}

// A 408 on a fresh connection is the backend's answer: passed on.
func TestFastH1Passes408OnFreshConn(t *testing.T) {
	rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
		if readReq(br) {
			io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
		}
	})
	f, _ := newFast(t, time.Second, time.Minute, 8)
	if res, _ := rtGet(t, f, rb.URL); res.StatusCode != 408 {
		t.Fatalf("status %d, want 408", res.StatusCode)
	}
}

// A backend cannot make the proxy buffer an endless header or endless 1xx
// responses.
func TestFastH1BoundsWhatPrecedesTheResponse(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c net.Conn)
		want error
	}{
		{"endless header", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
			for i := 0; i < 2000; i++ { // ~2 MiB
				if _, err := io.WriteString(c, line); err != nil {
					return
				}
			}
		}, errHeaderTooLarge},
		{"endless 1xx", func(c net.Conn) {
			for i := 0; i < 50; i++ {
				if _, err := io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"); err != nil {
					return
				}
			}
		}, errTooMany1xx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rb := newRawBackend(t, func(n int, c net.Conn, br *bufio.Reader) {
				if readReq(br) {
					tc.send(c)
				}
			})
			f, _ := newFast(t, 5*time.Second, time.Minute, 8)
			err := rtGetErr(context.Background(), f, rb.URL)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}
