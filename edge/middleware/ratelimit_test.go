package middleware

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testClock is a settable clock for RateLimitOptions.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// hit sends one request from remote (an "ip:port") through h and returns
// the recorded response.
func hit(h http.Handler, remote string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.RemoteAddr = remote
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
}

func newTestLimiter(t *testing.T, o RateLimitOptions) *RateLimiter {
	t.Helper()
	l := NewRateLimiter(o)
	t.Cleanup(l.Close)
	return l
}

func TestRateLimitBurstThen429(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	// 1 request per 10s, burst 3: after the burst the next token is 10s away.
	l := newTestLimiter(t, RateLimitOptions{Requests: 1, Per: 10 * time.Second, Burst: 3, Now: clock.Now})
	h := l.Handler(okHandler())
	for i := range 3 {
		if rec := hit(h, "192.0.2.1:1000"); rec.Code != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200", i+1, rec.Code)
		}
	}
	for i := range 5 { // rejected requests take no tokens: Retry-After stays 10
		rec := hit(h, "192.0.2.1:1000")
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("over the burst: status %d, want 429", rec.Code)
		}
		if got := rec.Header().Get("Retry-After"); got != "10" {
			t.Errorf("reject %d: Retry-After = %q, want 10", i, got)
		}
		if got := rec.Body.String(); got != "429 Too Many Requests\n" {
			t.Errorf("body = %q", got)
		}
		if got := rec.Header().Get("Content-Type"); got != "text/plain; charset=utf-8" {
			t.Errorf("Content-Type = %q", got)
		}
	}
	clock.Advance(2500 * time.Millisecond)
	if got := hit(h, "192.0.2.1:1000").Header().Get("Retry-After"); got != "8" { // 7.5s, rounded up
		t.Errorf("after 2.5s: Retry-After = %q, want 8", got)
	}
	clock.Advance(7500 * time.Millisecond)
	if rec := hit(h, "192.0.2.1:1000"); rec.Code != http.StatusOK {
		t.Errorf("after 10s: status %d, want 200", rec.Code)
	}
}

func TestRateLimitRetryAfterAtLeastOne(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	l := newTestLimiter(t, RateLimitOptions{Requests: 100, Per: time.Second, Burst: 1, Now: clock.Now})
	h := l.Handler(okHandler())
	hit(h, "192.0.2.1:1")
	rec := hit(h, "192.0.2.1:1")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("got %d Retry-After %q, want 429 and 1 (10ms rounded up)", rec.Code, rec.Header().Get("Retry-After"))
	}
}

func TestRateLimitRefill(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	// 2 per second, burst 4 (defaults: Per and MaxClients).
	l := newTestLimiter(t, RateLimitOptions{Requests: 2, Burst: 4, Now: clock.Now})
	h := l.Handler(okHandler())
	count := func() (n int) {
		for hit(h, "198.51.100.7:5").Code == http.StatusOK {
			n++
			if n > 100 {
				t.Fatal("never limited")
			}
		}
		return n
	}
	steps := []struct {
		advance time.Duration
		want    int
	}{
		{0, 4},                      // full bucket
		{0, 0},                      // empty
		{500 * time.Millisecond, 1}, // one token per 500ms
		{time.Second, 2},
		{time.Hour, 4}, // never more than the burst
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		if got := count(); got != s.want {
			t.Errorf("step %d (+%v): %d allowed, want %d", i, s.advance, got, s.want)
		}
	}
}

func TestRateLimitDefaultBurst(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	h := newTestLimiter(t, RateLimitOptions{Requests: 5, Per: time.Minute, Now: clock.Now}).Handler(okHandler())
	n := 0
	for hit(h, "192.0.2.9:1").Code == http.StatusOK && n < 100 {
		n++
	}
	if n != 5 {
		t.Errorf("burst = %d, want Requests (5)", n)
	}
}

func TestRateLimitKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		a, b   string // RemoteAddr of the first and second client
		shared bool
	}{
		{"different IPv4", "192.0.2.1:1000", "192.0.2.2:1000", false},
		{"same IPv4, other port", "192.0.2.1:1000", "192.0.2.1:2000", true},
		{"IPv6 same /64", "[2001:db8:1:2::1]:443", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:443", true},
		{"IPv6 neighbouring /64", "[2001:db8:1:2::1]:443", "[2001:db8:1:3::1]:443", false},
		{"IPv6 zone ignored", "[fe80::1%eth0]:443", "[fe80::2%eth1]:443", true},
		{"IPv4-mapped is IPv4", "[::ffff:192.0.2.1]:1", "192.0.2.1:2", true},
		{"IPv4-mapped not grouped", "[::ffff:192.0.2.1]:1", "192.0.2.2:2", false},
		{"no port", "192.0.2.1", "192.0.2.1:9", true},
		{"unparseable share one bucket", "pipe", "@", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newTestClock()
			h := newTestLimiter(t, RateLimitOptions{Requests: 1, Per: time.Minute, Burst: 2, Now: clock.Now}).Handler(okHandler())
			for range 2 {
				if rec := hit(h, tc.a); rec.Code != http.StatusOK {
					t.Fatalf("a: status %d", rec.Code)
				}
			}
			if rec := hit(h, tc.a); rec.Code != http.StatusTooManyRequests {
				t.Fatalf("a over burst: status %d", rec.Code)
			}
			want := http.StatusOK
			if tc.shared {
				want = http.StatusTooManyRequests
			}
			if rec := hit(h, tc.b); rec.Code != want {
				t.Errorf("b after a's burst: status %d, want %d", rec.Code, want)
			}
		})
	}
}

func TestRateLimitClientIP(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	// ClientIP reads a test header; an empty one yields the invalid Addr,
	// which falls back to RemoteAddr.
	clientIP := func(r *http.Request) netip.Addr {
		a, _ := netip.ParseAddr(r.Header.Get("X-Test-Client"))
		return a
	}
	h := newTestLimiter(t, RateLimitOptions{Requests: 1, Per: time.Minute, Burst: 1, ClientIP: clientIP, Now: clock.Now}).Handler(okHandler())
	send := func(client string) int {
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.RemoteAddr = "10.0.0.1:1234" // the proxy
		if client != "" {
			req.Header.Set("X-Test-Client", client)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, step := range []struct {
		client string
		want   int
	}{
		{"203.0.113.1", 200},
		{"203.0.113.1", 429},
		{"203.0.113.2", 200}, // same proxy, another client
		{"", 200},            // the proxy itself, by RemoteAddr
		{"", 429},
		{"10.0.0.1", 429}, // resolved to the same address: the same bucket
	} {
		if got := send(step.client); got != step.want {
			t.Errorf("client %q: status %d, want %d", step.client, got, step.want)
		}
	}
}

// TestRateLimitExpiry checks that a key idle for a full refill is forgotten
// and that a forgotten key is no better off than a remembered one.
func TestRateLimitExpiry(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	l := newTestLimiter(t, RateLimitOptions{Requests: 1, Per: 10 * time.Second, Burst: 3, Now: clock.Now})
	h := l.Handler(okHandler())
	for range 4 {
		hit(h, "192.0.2.1:1")
	}
	// Refill takes 30s. Just before, the key is kept and its bucket is not full.
	clock.Advance(25 * time.Second)
	l.clients.CleanUp()
	if got := l.Len(); got != 1 {
		t.Fatalf("Len after 25s = %d, want 1", got)
	}
	// The previous read (the 429) moved expiry to 30s (+1s) after it.
	clock.Advance(10 * time.Second)
	l.clients.CleanUp()
	if got := l.Len(); got != 0 {
		t.Fatalf("Len after a full refill idle = %d, want 0", got)
	}
	n := 0
	for hit(h, "192.0.2.1:1").Code == http.StatusOK && n < 10 {
		n++
	}
	if n != 3 {
		t.Errorf("a forgotten key got %d requests, want the burst (3)", n)
	}
}

func TestRateLimitMemoryBounded(t *testing.T) {
	t.Parallel()
	const maxClients, clients = 10_000, 100_000
	l := newTestLimiter(t, RateLimitOptions{Requests: 10, Per: time.Minute, MaxClients: maxClients})
	h := l.Handler(okHandler())
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	w := discardWriter{header: http.Header{}}
	for i := range clients {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		req.RemoteAddr = netip.AddrPortFrom(a, 1234).String()
		h.ServeHTTP(w, req)
	}
	l.clients.CleanUp()
	if got := l.Len(); got > maxClients || got == 0 {
		t.Errorf("Len after %d clients = %d, want 1..%d", clients, got, maxClients)
	}
}

func TestRateLimitCloseStopsGoroutines(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	base := runtime.NumGoroutine()
	var limiters []*RateLimiter
	for range 5 {
		l := NewRateLimiter(RateLimitOptions{Requests: 1, Per: time.Second}) // real clock: a clean-up goroutine each
		h := l.Handler(okHandler())
		for i := range 200 {
			hit(h, "192.0.2."+strconv.Itoa(i)+":1")
		}
		limiters = append(limiters, l)
	}
	for _, l := range limiters {
		l.Close()
		l.Close() // idempotent
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A closed limiter still answers.
	if rec := hit(limiters[0].Handler(okHandler()), "203.0.113.1:1"); rec.Code != http.StatusOK {
		t.Errorf("after Close: status %d", rec.Code)
	}
}

func TestNewRateLimiterPanics(t *testing.T) {
	t.Parallel()
	for _, o := range []RateLimitOptions{{Requests: 0}, {Requests: 1, Per: -1}, {Requests: 1, Burst: -1}, {Requests: 1, MaxClients: -1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewRateLimiter(%+v) did not panic", o)
				}
			}()
			NewRateLimiter(o).Close()
		}()
	}
}

// discardWriter is a ResponseWriter that keeps nothing but a header map
// (reset by the caller if it matters).
type discardWriter struct{ header http.Header }

func (d discardWriter) Header() http.Header       { return d.header }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// BenchmarkRateLimitAllow measures the allowed path: a known client whose
// bucket always has a token. Each goroutine is its own client.
func BenchmarkRateLimitAllow(b *testing.B) {
	l := NewRateLimiter(RateLimitOptions{Requests: 1 << 30, Per: time.Second})
	defer l.Close()
	h := l.Handler(okHandler())
	var next sync.Mutex
	var id int
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		id++
		n := id
		next.Unlock()
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.RemoteAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}), 1234).String()
		w := discardWriter{header: http.Header{}}
		for pb.Next() {
			h.ServeHTTP(w, req)
		}
	})
}

// BenchmarkRateLimitReject measures the rejected path (429 and its header).
func BenchmarkRateLimitReject(b *testing.B) {
	l := NewRateLimiter(RateLimitOptions{Requests: 1, Per: time.Hour})
	defer l.Close()
	h := l.Handler(okHandler())
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.RemoteAddr = "192.0.2.1:1234"
	w := discardWriter{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
}
