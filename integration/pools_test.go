package integration

// Upstream pools through the binary: balancing policies, active health
// checks, what a client sees when no backend can answer, retries and
// failover, sticky sessions and the admin API's view of the pools.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// poolBackend is an echo backend that counts the ordinary requests it gets
// (not its health probes) and whose GET /health can be switched to 500.
type poolBackend struct {
	name       string
	srv        *httptest.Server
	healthFail atomic.Bool
	hits       atomic.Int64 // requests other than /health
}

func newPoolBackend(t testing.TB, name string) *poolBackend {
	t.Helper()
	b := &poolBackend{name: name}
	echo := echoHandler(name)
	b.srv = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if b.healthFail.Load() {
				http.Error(w, "sick", http.StatusInternalServerError)
				return
			}
			io.WriteString(w, "ok\n")
			return
		}
		b.hits.Add(1)
		echo(w, r)
	})
	return b
}

// URL is the backend's URL as configured (and as /upstreams shows it).
func (b *poolBackend) URL() string { return b.srv.URL }

// TestPoolsRoundRobinCycle checks that round_robin walks the backends in
// configuration order, one request each, and that weights give nginx's
// smooth interleaving (2:1 is a, b, a).
func TestPoolsRoundRobinCycle(t *testing.T) {
	t.Parallel()
	a, b, c := newPoolBackend(t, "a"), newPoolBackend(t, "b"), newPoolBackend(t, "c")
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  rr:
    balance: round_robin
    backends:
      - url: %s
      - url: %s
      - url: %s
  weighted:
    backends:
      - {url: %s, weight: 2}
      - {url: %s, weight: 1}
sites:
  - hosts: [rr.test]
    tls: off
    routes:
      - path: /weighted/
        upstream: weighted
      - path: /
        upstream: rr
`, a.URL(), b.URL(), c.URL(), a.URL(), b.URL())})

	t.Run("equal", func(t *testing.T) {
		order := []string{"a", "b", "c"}
		var seq []string
		for i := range 30 {
			seq = append(seq, decodeEcho(t, g.Get(t, "rr.test", "/x/"+strconv.Itoa(i))).Backend)
		}
		start := slices.Index(order, seq[0])
		for i, got := range seq {
			if want := order[(start+i)%3]; got != want {
				t.Fatalf("request %d went to %s, want %s: the sequence is not an exact a, b, c cycle: %v", i, got, want, seq)
			}
		}
	})
	t.Run("weighted", func(t *testing.T) {
		var seq []string
		count := map[string]int{}
		for i := range 30 {
			e := decodeEcho(t, g.Get(t, "rr.test", "/weighted/"+strconv.Itoa(i)))
			seq = append(seq, e.Backend)
			count[e.Backend]++
		}
		if count["a"] != 20 || count["b"] != 10 {
			t.Errorf("weights 2:1 over 30 requests gave %v, want a:20 b:10 (sequence %v)", count, seq)
		}
		for i := range len(seq) - 3 {
			if seq[i] != seq[i+3] {
				t.Fatalf("weighted sequence is not periodic with period 3 at %d: %v", i, seq)
			}
		}
		for i := range len(seq) - 1 {
			if seq[i] == "b" && seq[i+1] == "b" {
				t.Fatalf("smooth weighted round-robin sent two requests in a row to the lighter backend: %v", seq)
			}
		}
	})
}

// TestPoolsHealthCheck flips one backend's /health to 500 and back, and
// checks (through /upstreams and through traffic) that it leaves rotation
// after fall failed probes and returns after rise passed ones.
func TestPoolsHealthCheck(t *testing.T) {
	t.Parallel()
	a, b, c := newPoolBackend(t, "a"), newPoolBackend(t, "b"), newPoolBackend(t, "c")
	ag := startAdminGateway(t, "", fmt.Sprintf(`
upstreams:
  app:
    backends:
      - url: %s
      - url: %s
      - url: %s
    health_check:
      path: /health
      interval: 100ms
      timeout: 100ms
      fall: 2
      rise: 2
sites:
  - hosts: [hc.test]
    tls: off
    routes:
      - path: /
        upstream: app
`, a.URL(), b.URL(), c.URL()))

	healthyIs := func(want bool) func() (bool, string) {
		return func() (bool, string) {
			st := ag.Backend(t, "app", b.URL())
			return st.Healthy == want, fmt.Sprintf("%+v", st)
		}
	}
	// Backends start healthy and stay so while /health passes.
	if st := ag.Backend(t, "app", b.URL()); !st.Healthy {
		t.Fatalf("backend b is not healthy at start: %+v", st)
	}

	b.healthFail.Store(true)
	pollUntil(t, 5*time.Second, "backend b marked unhealthy in /upstreams", healthyIs(false))
	if st := ag.Backend(t, "app", b.URL()); !strings.Contains(st.LastCheckError, "500") {
		t.Errorf("last_check_error of b = %q, want it to mention the 500", st.LastCheckError)
	}
	before := b.hits.Load()
	seen := map[string]int{}
	for i := range 30 {
		e := decodeEcho(t, ag.Get(t, "hc.test", "/p/"+strconv.Itoa(i)))
		seen[e.Backend]++
	}
	if n := b.hits.Load() - before; n != 0 || seen["b"] != 0 {
		t.Errorf("unhealthy backend b got %d of 30 requests (answers by backend: %v), want 0", n, seen)
	}
	if seen["a"] == 0 || seen["c"] == 0 {
		t.Errorf("the healthy backends did not share the traffic: %v", seen)
	}

	b.healthFail.Store(false)
	pollUntil(t, 5*time.Second, "backend b back to healthy in /upstreams", healthyIs(true))
	if st := ag.Backend(t, "app", b.URL()); st.LastCheckError != "" {
		t.Errorf("last_check_error of b = %q after passing probes, want empty", st.LastCheckError)
	}
	before = b.hits.Load()
	for i := range 6 {
		decodeEcho(t, ag.Get(t, "hc.test", "/back/"+strconv.Itoa(i)))
	}
	if n := b.hits.Load() - before; n != 2 {
		t.Errorf("backend b back in rotation got %d of 6 round-robin requests, want 2", n)
	}
}

// TestPoolsAllBackendsDown checks what a client sees when no backend can
// answer: a dial failure is 502 (passive health never ejects the last
// backend in rotation, so it stays 502), and a pool whose backends all
// fail their active health checks answers 503 with Retry-After at once.
// Neither body names a backend.
func TestPoolsAllBackendsDown(t *testing.T) {
	t.Parallel()
	d1, d2, d3, d4 := deadAddr(t), deadAddr(t), deadAddr(t), deadAddr(t)
	g := startAdminGateway(t, "", fmt.Sprintf(`
upstreams:
  dead:
    backends:
      - url: http://%s
      - url: http://%s
  checked:
    backends:
      - url: http://%s
      - url: http://%s
    health_check:
      path: /health
      interval: 100ms
      timeout: 100ms
      fall: 1
      rise: 2
sites:
  - hosts: [down.test]
    tls: off
    routes:
      - path: /checked/
        upstream: checked
      - path: /
        upstream: dead
`, d1, d2, d3, d4))
	forbidden := []string{d1, d2, d3, d4, "127.0.0.1", "refused"}

	t.Run("dial failure is 502", func(t *testing.T) {
		t.Parallel()
		for i := range 10 {
			r := g.Get(t, "down.test", "/x/"+strconv.Itoa(i))
			assertErrorBody(t, r, http.StatusBadGateway, forbidden...)
			if t.Failed() {
				t.Fatalf("request %d: %d %q", i, r.Status, r.Body)
			}
		}
		// Passive health ejected one of the two, never both.
		var ejected []string
		for _, p := range g.Upstreams(t) {
			if p.Name != "dead" {
				continue
			}
			for _, b := range p.Backends {
				if b.Ejected {
					ejected = append(ejected, b.URL)
				}
			}
		}
		if len(ejected) != 1 {
			t.Errorf("after 10 refused requests /upstreams shows %d ejected backends of pool dead (%v), want exactly 1 (max_ejected_percent 50)", len(ejected), ejected)
		}
	})
	t.Run("all unhealthy is 503 with Retry-After", func(t *testing.T) {
		t.Parallel()
		var r Response
		pollUntil(t, 5*time.Second, "503 once both backends fail their health checks", func() (bool, string) {
			r = g.Get(t, "down.test", "/checked/x")
			if r.Status != http.StatusServiceUnavailable && r.Status != http.StatusBadGateway {
				t.Fatalf("GET /checked/x = %d %q, want 502 (before the checks) or 503", r.Status, r.Body)
			}
			return r.Status == http.StatusServiceUnavailable, fmt.Sprintf("%d %q", r.Status, r.Body)
		})
		assertErrorBody(t, r, http.StatusServiceUnavailable, forbidden...)
		ra := r.Header.Get("Retry-After")
		if n, err := strconv.Atoi(ra); err != nil || n < 1 || n > 300 {
			t.Errorf("Retry-After = %q, want whole seconds in 1..300", ra)
		}
	})
}

// resetBackend hijacks every request and closes the connection with a
// reset, without answering. It counts requests by method.
type resetBackend struct {
	srv    *httptest.Server
	mu     sync.Mutex
	byVerb map[string]int
}

func newResetBackend(t testing.TB) *resetBackend {
	t.Helper()
	rb := &resetBackend{byVerb: map[string]int{}}
	rb.srv = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		rb.mu.Lock()
		rb.byVerb[r.Method]++
		rb.mu.Unlock()
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST
		}
		c.Close()
	})
	return rb
}

func (rb *resetBackend) count(method string) int {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.byVerb[method]
}

// TestPoolsRetries checks that an idempotent request failing with a reset
// is retried on another backend (a small body is buffered and resent), at
// most retries.max times; that a POST, or a PUT whose body exceeds
// retries.max_body, is not retried (502); and that a dial failure fails over
// for any method, body included.
func TestPoolsRetries(t *testing.T) {
	t.Parallel()
	rb := newResetBackend(t)
	var goodMu sync.Mutex
	goodBy := map[string]int{} // method → requests
	goodCount := func(method string) int {
		goodMu.Lock()
		defer goodMu.Unlock()
		return goodBy[method]
	}
	echo := echoHandler("good")
	good := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		goodMu.Lock()
		goodBy[r.Method]++
		goodMu.Unlock()
		echo(w, r)
	})
	dead := deadAddr(t)
	resets := []*resetBackend{newResetBackend(t), newResetBackend(t), newResetBackend(t), newResetBackend(t)}
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  allreset:
    backends:
      - url: %[4]s
      - url: %[5]s
      - url: %[6]s
      - url: %[7]s
    passive_health: {max_fails: 0}
    retries: {max: 2, budget_percent: 100}
  flaky:
    backends:
      - url: %[1]s
      - url: %[2]s
    passive_health: {max_fails: 0}
    retries: {max: 2, budget_percent: 100}
  failover:
    backends:
      - url: http://%[3]s
      - url: %[2]s
    passive_health: {max_fails: 0}
sites:
  - hosts: [retry.test]
    tls: off
    routes:
      - path: /failover/
        upstream: failover
      - path: /allreset/
        upstream: allreset
      - path: /
        upstream: flaky
`, rb.srv.URL, good.URL, dead, resets[0].srv.URL, resets[1].srv.URL, resets[2].srv.URL, resets[3].srv.URL)})

	t.Run("GET retried", func(t *testing.T) {
		for i := range 8 {
			e := decodeEcho(t, g.Get(t, "retry.test", "/get/"+strconv.Itoa(i)))
			if e.Backend != "good" {
				t.Errorf("GET answered by %q, want good", e.Backend)
			}
		}
		t.Logf("the resetting backend got %d of the 8 GETs' first attempts", rb.count(http.MethodGet))
		if rb.count(http.MethodGet) == 0 {
			t.Errorf("the resetting backend got no GET: round-robin never tried it, so no retry was tested")
		}
	})
	t.Run("PUT with a small body retried", func(t *testing.T) {
		before := rb.count(http.MethodPut)
		body := strings.Repeat("p", 1000)
		for i := 0; i < 6 && rb.count(http.MethodPut) == before; i++ {
			r := g.Do(t, "retry.test", http.MethodPut, "/put/"+strconv.Itoa(i), nil, strings.NewReader(body))
			e := decodeEcho(t, r)
			if e.Backend != "good" || e.BodyLen != int64(len(body)) {
				t.Errorf("PUT answered by %q with %d body bytes, want good with %d", e.Backend, e.BodyLen, len(body))
			}
		}
		if rb.count(http.MethodPut) == before {
			t.Errorf("the resetting backend got no PUT in 6 round-robin requests")
		}
	})
	// notRetried sends 6 requests with body to the flaky pool: those that
	// reach the resetting backend must fail with 502 and never reach good.
	notRetried := func(t *testing.T, method, body string) {
		resetBefore, goodBefore := rb.count(method), goodCount(method)
		ok, failed := 0, 0
		for i := range 6 {
			r := g.Do(t, "retry.test", method, "/nr/"+strconv.Itoa(i), nil, strings.NewReader(body))
			switch r.Status {
			case http.StatusOK:
				ok++
				if e := decodeEcho(t, r); e.BodyLen != int64(len(body)) {
					t.Errorf("%s reached good with %d body bytes, want %d", method, e.BodyLen, len(body))
				}
			case http.StatusBadGateway:
				failed++
				assertErrorBody(t, r, http.StatusBadGateway, rb.srv.Listener.Addr().String(), "reset")
			default:
				t.Errorf("%s = %d %q, want 200 or 502", method, r.Status, r.Body)
			}
		}
		resetGot, goodGot := rb.count(method)-resetBefore, goodCount(method)-goodBefore
		t.Logf("%s: %d×200, %d×502; resetting backend got %d, good got %d", method, ok, failed, resetGot, goodGot)
		if failed == 0 {
			t.Errorf("no %s failed: none reached the resetting backend (round-robin over two backends should)", method)
		}
		if resetGot != failed || goodGot != ok {
			t.Errorf("resetting backend got %d %ss and good %d; clients saw %d×502 and %d×200: "+
				"a %s that failed on the reset must not be resent to another backend", resetGot, method, goodGot, failed, ok, method)
		}
	}
	t.Run("POST not retried", func(t *testing.T) { notRetried(t, http.MethodPost, "hello=world") })
	// retries.max_body is 64KiB by default: a larger body is streamed, not
	// buffered, so even an idempotent PUT cannot be resent.
	t.Run("PUT over max_body not retried", func(t *testing.T) { notRetried(t, http.MethodPut, strings.Repeat("x", 100<<10)) })
	t.Run("at most max retries", func(t *testing.T) {
		r := g.Get(t, "retry.test", "/allreset/x")
		assertErrorBody(t, r, http.StatusBadGateway, "127.0.0.1", "reset")
		total, tried := 0, 0
		for _, rb := range resets {
			n := rb.count(http.MethodGet)
			total += n
			if n > 0 {
				tried++
			}
		}
		if total != 3 || tried != 3 {
			t.Errorf("a GET through 4 resetting backends made %d attempts on %d backends, want 3 on 3 (1 + retries max 2, each backend once)", total, tried)
		}
	})
	t.Run("dial failure fails over for POST", func(t *testing.T) {
		body := strings.Repeat("b", 3000)
		for i := range 6 {
			r := g.Do(t, "retry.test", http.MethodPost, "/failover/"+strconv.Itoa(i), nil, strings.NewReader(body))
			e := decodeEcho(t, r)
			if e.Backend != "good" || e.Method != http.MethodPost || e.BodyLen != int64(len(body)) {
				t.Errorf("POST after a refused connect: %s by %q with %d body bytes, want POST by good with %d",
					e.Method, e.Backend, e.BodyLen, len(body))
			}
		}
	})
}

// TestPoolsStickyCookie checks balance: cookie: the first answer sets the
// signed gatehouse_sticky cookie, requests carrying it stay on its
// backend, and a tampered cookie is ignored (round-robin, new cookie).
func TestPoolsStickyCookie(t *testing.T) {
	t.Parallel()
	a, b, c := newPoolBackend(t, "a"), newPoolBackend(t, "b"), newPoolBackend(t, "c")
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  app:
    balance: cookie
    sticky: {secret: "an-integration-test-secret-0123"}
    backends:
      - url: %s
      - url: %s
      - url: %s
sites:
  - hosts: [sticky.test]
    tls: off
    routes:
      - path: /
        upstream: app
`, a.URL(), b.URL(), c.URL())})

	stickyCookie := func(t *testing.T, r Response) *http.Cookie {
		t.Helper()
		for _, line := range r.Header.Values("Set-Cookie") {
			ck, err := http.ParseSetCookie(line)
			if err == nil && ck.Name == "gatehouse_sticky" {
				return ck
			}
		}
		return nil
	}
	withCookie := func(v string) http.Header { return http.Header{"Cookie": {"gatehouse_sticky=" + v}} }

	r := g.Get(t, "sticky.test", "/")
	first := decodeEcho(t, r).Backend
	ck := stickyCookie(t, r)
	if ck == nil {
		t.Fatalf("first response has no gatehouse_sticky Set-Cookie: %v", r.Header.Values("Set-Cookie"))
	}
	if !ck.HttpOnly || ck.Path != "/" || ck.SameSite != http.SameSiteLaxMode || ck.Secure {
		t.Errorf("Set-Cookie %q: want HttpOnly, Path=/, SameSite=Lax and no Secure over plain HTTP", r.Header.Get("Set-Cookie"))
	}
	if strings.Contains(ck.Value, "127.0.0.1") || strings.Contains(ck.Value, "http") {
		t.Errorf("cookie value %q names a backend address in clear", ck.Value)
	}

	for i := range 20 {
		r := g.Do(t, "sticky.test", http.MethodGet, "/s/"+strconv.Itoa(i), withCookie(ck.Value), nil)
		if got := decodeEcho(t, r).Backend; got != first {
			t.Fatalf("request %d with the sticky cookie went to %s, want %s", i, got, first)
		}
		if c := stickyCookie(t, r); c != nil {
			t.Errorf("request %d already on its cookie's backend got a new Set-Cookie %q", i, c.Value)
		}
	}

	// Tamper with the signature: the cookie no longer counts.
	last := ck.Value[len(ck.Value)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	tampered := ck.Value[:len(ck.Value)-1] + string(repl)
	seen := map[string]bool{}
	for i := range 6 {
		r := g.Do(t, "sticky.test", http.MethodGet, "/t/"+strconv.Itoa(i), withCookie(tampered), nil)
		got := decodeEcho(t, r).Backend
		seen[got] = true
		nc := stickyCookie(t, r)
		if nc == nil {
			t.Fatalf("response to a tampered cookie (answered by %s) has no new Set-Cookie", got)
		}
		if nc.Value == tampered {
			t.Fatalf("the gateway echoed the tampered cookie back")
		}
		// The new cookie pins its own backend.
		r2 := g.Do(t, "sticky.test", http.MethodGet, "/t2/"+strconv.Itoa(i), withCookie(nc.Value), nil)
		if got2 := decodeEcho(t, r2).Backend; got2 != got {
			t.Errorf("the cookie set by %s sent the next request to %s", got, got2)
		}
	}
	if len(seen) < 2 {
		t.Errorf("6 requests with a tampered cookie all went to %v: they are not rebalanced", seen)
	}
}

// holdBackend echoes at once, except requests whose path starts with
// /hold, which it holds until Release (or until the gateway gives up on
// them). Each held request's arrival is announced on Entered.
type holdBackend struct {
	name    string
	srv     *httptest.Server
	Entered chan string
	release chan struct{}
	once    sync.Once
	hits    atomic.Int64 // requests other than /health
}

func newHoldBackend(t testing.TB, name string) *holdBackend {
	t.Helper()
	h := &holdBackend{name: name, Entered: make(chan string, 16), release: make(chan struct{})}
	echo := echoHandler(name)
	h.srv = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			io.WriteString(w, "ok\n")
			return
		}
		h.hits.Add(1)
		if strings.HasPrefix(r.URL.Path, "/hold") {
			h.Entered <- name
			select {
			case <-h.release:
			case <-r.Context().Done():
				return
			}
		}
		echo(w, r)
	})
	return h
}

// Release lets every held request (and later ones) finish.
func (h *holdBackend) Release() { h.once.Do(func() { close(h.release) }) }

// releaseAtEnd releases hs when the test ends, before the gateway (started
// earlier) is stopped, so that its graceful shutdown does not wait for them.
func releaseAtEnd(t testing.TB, hs ...*holdBackend) {
	t.Cleanup(func() {
		for _, h := range hs {
			h.Release()
		}
	})
}

// asyncResult is the outcome of a request sent by getAsync.
type asyncResult struct {
	Response
	Err error
}

// getAsync sends GET path (Host host) through g in the background.
func getAsync(g *Gateway, host, path string) <-chan asyncResult {
	ch := make(chan asyncResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.BaseURL+path, nil)
		if err != nil {
			ch <- asyncResult{Err: err}
			return
		}
		req.Host = host
		resp, err := g.Client.Do(req)
		if err != nil {
			ch <- asyncResult{Err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- asyncResult{Response: Response{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, Err: err}
	}()
	return ch
}

// waitEntered waits for a held request to reach h and returns the name.
func waitEntered(t testing.TB, hs ...*holdBackend) string {
	t.Helper()
	cases := make(chan string, 1)
	stop := make(chan struct{})
	defer close(stop)
	for _, h := range hs {
		go func() {
			select {
			case n := <-h.Entered:
				select {
				case cases <- n:
				default:
				}
			case <-stop:
			}
		}()
	}
	select {
	case n := <-cases:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no backend got the held request within 10s")
		return ""
	}
}

// TestPoolsUpstreamsStatus checks GET /upstreams: every pool (inline pools
// included) with its balance, backends, health and in-flight count.
func TestPoolsUpstreamsStatus(t *testing.T) {
	t.Parallel()
	slow := newHoldBackend(t, "slow")
	a, b := newPoolBackend(t, "a"), newPoolBackend(t, "b")
	inline := newPoolBackend(t, "inline")
	ag := startAdminGateway(t, "", fmt.Sprintf(`
upstreams:
  api:
    balance: least_conn
    backends:
      - url: %s
        weight: 3
        max_conns: 7
      - url: %s
    health_check: {path: /health, interval: 1s, timeout: 500ms}
  slowpool:
    backends:
      - url: %s
sites:
  - hosts: [status.test]
    tls: off
    routes:
      - path: /hold
        upstream: slowpool
      - path: /inline
        upstream: [%s]
      - path: /
        upstream: api
`, a.URL(), b.URL(), slow.srv.URL, inline.URL()))
	releaseAtEnd(t, slow)

	pools := ag.Upstreams(t)
	byName := map[string]poolStatus{}
	var names []string
	for _, p := range pools {
		byName[p.Name] = p
		names = append(names, p.Name)
	}
	if !slices.IsSorted(names) {
		t.Errorf("pools are not sorted by name: %v", names)
	}
	api, ok := byName["api"]
	if !ok {
		t.Fatalf("/upstreams has no pool api: %v", names)
	}
	if api.Balance != "least_conn" || !api.HealthChecks || len(api.Backends) != 2 {
		t.Errorf("pool api = %+v, want balance least_conn, health_checks true, 2 backends", api)
	} else {
		b0 := api.Backends[0]
		if b0.URL != a.URL() || b0.Weight != 3 || b0.MaxConns != 7 || !b0.Healthy || b0.Ejected || b0.Inflight != 0 {
			t.Errorf("api backend 0 = %+v, want url %s, weight 3, max_conns 7, healthy, not ejected, inflight 0", b0, a.URL())
		}
		if b1 := api.Backends[1]; b1.URL != b.URL() || b1.Weight != 1 || b1.MaxConns != 0 {
			t.Errorf("api backend 1 = %+v, want url %s, weight 1, max_conns 0", b1, b.URL())
		}
	}
	if sp, ok := byName["slowpool"]; !ok || sp.Balance != "round_robin" || sp.HealthChecks {
		t.Errorf("pool slowpool = %+v (present %v), want round_robin without health checks", sp, ok)
	}
	foundInline := false
	for _, p := range pools {
		if len(p.Backends) == 1 && p.Backends[0].URL == inline.URL() {
			foundInline = true
			if !strings.Contains(p.Name, "/inline") {
				t.Errorf("inline pool is named %q, want a name mentioning its route /inline", p.Name)
			}
		}
	}
	if !foundInline {
		t.Errorf("/upstreams does not list the inline pool of /inline: %v", names)
	}

	// A request held by the backend shows as in flight.
	done := getAsync(ag.Gateway, "status.test", "/hold")
	waitEntered(t, slow)
	inflightIs := func(want int64) func() (bool, string) {
		return func() (bool, string) {
			st := ag.Backend(t, "slowpool", slow.srv.URL)
			return st.Inflight == want, fmt.Sprintf("%+v", st)
		}
	}
	pollUntil(t, 5*time.Second, "slowpool inflight 1 while a request is held", inflightIs(1))
	slow.Release()
	if res := <-done; res.Err != nil || res.Status != http.StatusOK {
		t.Fatalf("the held request: %d %v", res.Status, res.Err)
	}
	pollUntil(t, 5*time.Second, "slowpool inflight back to 0", inflightIs(0))
}

// TestPoolsMaxConnsAndLeastConn checks max_conns with timeouts.queue (503
// with Retry-After once the queue wait is over; served when a slot frees
// in time) and that least_conn avoids a busy backend.
func TestPoolsMaxConnsAndLeastConn(t *testing.T) {
	t.Parallel()
	capped, queued := newHoldBackend(t, "capped"), newHoldBackend(t, "queued")
	l1, l2 := newHoldBackend(t, "l1"), newHoldBackend(t, "l2")
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  capped:
    backends:
      - {url: %s, max_conns: 1}
    timeouts: {queue: 200ms}
  queued:
    backends:
      - {url: %s, max_conns: 1}
    timeouts: {queue: 15s}
  least:
    balance: least_conn
    backends:
      - url: %s
      - url: %s
sites:
  - hosts: [capped.test]
    tls: off
    routes: [{path: /, upstream: capped}]
  - hosts: [queued.test]
    tls: off
    routes: [{path: /, upstream: queued}]
  - hosts: [least.test]
    tls: off
    routes: [{path: /, upstream: least}]
`, capped.srv.URL, queued.srv.URL, l1.srv.URL, l2.srv.URL)})
	releaseAtEnd(t, capped, queued, l1, l2)

	t.Run("over max_conns after the queue wait is 503", func(t *testing.T) {
		t.Parallel()
		held := getAsync(g, "capped.test", "/hold")
		waitEntered(t, capped)
		start := time.Now()
		r := g.Get(t, "capped.test", "/quick")
		waited := time.Since(start)
		assertErrorBody(t, r, http.StatusServiceUnavailable, capped.srv.URL, "127.0.0.1")
		if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 {
			t.Errorf("Retry-After = %q, want whole seconds >= 1", r.Header.Get("Retry-After"))
		}
		if waited < 150*time.Millisecond {
			t.Errorf("503 after %v, want it only after the 200ms queue wait", waited)
		}
		capped.Release()
		if res := <-held; res.Err != nil || res.Status != 200 {
			t.Fatalf("held request: %d %v", res.Status, res.Err)
		}
		if r := g.Get(t, "capped.test", "/after"); r.Status != 200 {
			t.Errorf("GET once the slot is free = %d %q, want 200", r.Status, r.Body)
		}
	})
	t.Run("a queued request is served when the slot frees", func(t *testing.T) {
		t.Parallel()
		held := getAsync(g, "queued.test", "/hold")
		waitEntered(t, queued)
		before := queued.hits.Load()
		waiting := getAsync(g, "queued.test", "/quick")
		// Not a synchronisation: the request must stay unanswered (queued
		// for up to 15s) for as long as the slot is taken.
		select {
		case res := <-waiting:
			t.Fatalf("request over max_conns answered while the slot was taken (%d %q), want it queued", res.Status, res.Body)
		case <-time.After(300 * time.Millisecond):
		}
		if n := queued.hits.Load(); n != before {
			t.Fatalf("the backend got a second request while at max_conns 1")
		}
		queued.Release()
		for _, ch := range []<-chan asyncResult{held, waiting} {
			if res := <-ch; res.Err != nil || res.Status != 200 {
				t.Errorf("request: %d %q %v, want 200", res.Status, res.Body, res.Err)
			}
		}
	})
	t.Run("least_conn avoids the busy backend", func(t *testing.T) {
		t.Parallel()
		held := getAsync(g, "least.test", "/hold")
		busy := waitEntered(t, l1, l2)
		for i := range 10 {
			e := decodeEcho(t, g.Get(t, "least.test", "/q/"+strconv.Itoa(i)))
			if e.Backend == busy {
				t.Fatalf("request %d went to %s, which is holding a request; least_conn should pick the idle one", i, busy)
			}
		}
		l1.Release()
		l2.Release()
		if res := <-held; res.Err != nil || res.Status != 200 {
			t.Errorf("held request: %d %v", res.Status, res.Err)
		}
	})
}
