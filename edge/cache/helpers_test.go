package cache

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is the injectable clock: tests move time instead of sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	// Whole seconds, so that Date arithmetic in tests is exact.
	return &fakeClock{t: time.Now().Truncate(time.Second)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func httpDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// testEnv is a real origin (httptest.Server counting its hits) behind a
// ReverseProxy wrapped by the cache, served by a front httptest.Server.
type testEnv struct {
	t        *testing.T
	clock    *fakeClock
	cache    *Cache
	origin   *httptest.Server
	front    *httptest.Server
	client   *http.Client
	hits     atomic.Int64 // requests that reached the origin
	inflight atomic.Int64 // front handlers still running
}

// newEnv starts an env whose origin runs h after setting Date from the fake
// clock (h may override it).
func newEnv(t *testing.T, h http.HandlerFunc, opts ...func(*Options)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, clock: newFakeClock()}
	e.origin = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		w.Header().Set("Date", httpDate(e.clock.Now()))
		h(w, r)
	}))
	o := Options{MaxSize: 8 << 20, Now: e.clock.Now, Logger: quietLogger}
	for _, f := range opts {
		f(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.cache = c
	proxyTransport := &http.Transport{}
	proxy := newProxy(e.origin.URL, proxyTransport)
	handler := c.Handler(proxy)
	e.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.inflight.Add(1)
		defer e.inflight.Add(-1)
		handler.ServeHTTP(w, r)
	}))
	clientTransport := &http.Transport{DisableCompression: true}
	e.client = &http.Client{
		Transport:     clientTransport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(func() {
		clientTransport.CloseIdleConnections()
		e.front.Close()
		c.Close()
		e.origin.Close()
		proxyTransport.CloseIdleConnections()
		checkNoBuffering(t, c)
	})
	return e
}

// newProxy is the realistic "next": a ReverseProxy to target that keeps the
// client's Host.
func newProxy(target string, tr http.RoundTripper) *httputil.ReverseProxy {
	u, err := url.Parse(target)
	if err != nil {
		panic(err)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		},
		Transport: tr,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
}

type result struct {
	status int
	header http.Header
	body   string
}

func (r result) cacheStatus() string { return r.header.Get("Cache-Status") }

// do sends a request through the front server; hdr holds name, value pairs.
func (e *testEnv) do(method, path string, hdr ...string) (result, error) {
	req, err := http.NewRequestWithContext(context.Background(), method, e.front.URL+path, nil)
	if err != nil {
		return result{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	return result{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

func (e *testEnv) get(path string, hdr ...string) result {
	e.t.Helper()
	r, err := e.do(http.MethodGet, path, hdr...)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	return r
}

func (e *testEnv) url(path string) string { return e.front.URL + path }

// waitIdle polls until no front handler runs (the cache has finished with
// every response, including what it commits after the client got it).
func (e *testEnv) waitIdle() {
	e.t.Helper()
	waitFor(e.t, "front handlers to finish", func() bool { return e.inflight.Load() == 0 })
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// expectStatus asserts the Cache-Status of r.
func expectStatus(t *testing.T, r result, want string) {
	t.Helper()
	if got := r.cacheStatus(); got != want {
		t.Fatalf("Cache-Status = %q, want %q (status %d, body %q)", got, want, r.status, r.body)
	}
}

func expectPrefix(t *testing.T, r result, want string) {
	t.Helper()
	if got := r.cacheStatus(); !strings.HasPrefix(got, want) {
		t.Fatalf("Cache-Status = %q, want prefix %q", got, want)
	}
}

// direct runs a request through c.Handler(next) without a network.
func direct(c *Cache, next http.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	c.Handler(next).ServeHTTP(rec, req)
	return rec
}

func newTestCache(t *testing.T, clock *fakeClock, mod ...func(*Options)) *Cache {
	t.Helper()
	o := Options{MaxSize: 8 << 20, Logger: quietLogger}
	if clock != nil {
		o.Now = clock.Now
	}
	for _, f := range mod {
		f(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		checkNoBuffering(t, c)
	})
	return c
}

// checkNoBuffering asserts that a Cache whose requests have all ended holds
// no buffering reservation.
func checkNoBuffering(t *testing.T, c *Cache) {
	t.Helper()
	if n := c.Stats().Buffering; n != 0 {
		t.Errorf("Stats().Buffering = %d after all requests ended, want 0", n)
	}
}
