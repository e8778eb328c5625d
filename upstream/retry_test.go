package upstream

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// opaqueReader hides its length, so the request goes out chunked.
type opaqueReader struct{ r io.Reader }

func (o opaqueReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestRetryRules sends one request to a pool whose first backend resets the
// connection without answering, and a good second one (balance first).
func TestRetryRules(t *testing.T) {
	t.Parallel()
	small := "small body"
	large := strings.Repeat("x", 2048)
	tests := []struct {
		name    string
		method  string
		body    io.Reader
		header  map[string]string
		retries config.Retries
		retried bool
		want    string // body the good backend must receive
	}{
		{"GET is retried", http.MethodGet, nil, nil, config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, true, ""},
		{"HEAD is retried", http.MethodHead, nil, nil, config.Retries{Max: 1, BudgetPercent: 100, MaxBody: 1024}, true, ""},
		{"DELETE is retried", http.MethodDelete, nil, nil, config.Retries{Max: 1, BudgetPercent: 100, MaxBody: 1024}, true, ""},
		{"PUT with a buffered body is retried", http.MethodPut, strings.NewReader(small), nil,
			config.Retries{Max: 1, BudgetPercent: 100, MaxBody: 1024}, true, small},
		{"POST with a body is not retried", http.MethodPost, strings.NewReader(small), nil,
			config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"POST without a body is not retried", http.MethodPost, nil, nil,
			config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"PATCH is not retried", http.MethodPatch, strings.NewReader(small), nil,
			config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"PUT over max_body is not retried", http.MethodPut, strings.NewReader(large), nil,
			config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"PUT of unknown length is not retried", http.MethodPut, opaqueReader{strings.NewReader(small)}, nil,
			config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"PUT with Expect: 100-continue is not buffered", http.MethodPut, strings.NewReader(small),
			map[string]string{"Expect": "100-continue"}, config.Retries{Max: 2, BudgetPercent: 100, MaxBody: 1024}, false, ""},
		{"retries 0: GET is not retried", http.MethodGet, nil, nil, config.Retries{Max: 0, BudgetPercent: 100}, false, ""},
		{"budget 0 still has the minimum", http.MethodGet, nil, nil, config.Retries{Max: 1, BudgetPercent: 0}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bad, good := newTestBackend(t, "bad"), newTestBackend(t, "good")
			bad.mode.Store(modeReset)
			pool := newTestPool(t, func(u *config.Upstream) {
				u.Balance = "first"
				u.Retries = tc.retries
			}, bad.URL, good.URL)
			front := serveProxy(t, NewProxy(pool, quietOptions()))
			req, _ := http.NewRequest(tc.method, front.URL+"/r", tc.body)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			wantCode := http.StatusBadGateway
			if tc.retried {
				wantCode = http.StatusOK
			}
			if res.StatusCode != wantCode {
				t.Fatalf("status %d, want %d", res.StatusCode, wantCode)
			}
			noAddress(t, string(body), pool)
			if bad.hits.Load() != 1 {
				t.Errorf("failing backend got %d attempts, want 1", bad.hits.Load())
			}
			if tc.retried {
				if good.hits.Load() != 1 {
					t.Errorf("good backend got %d attempts, want 1", good.hits.Load())
				}
				if got := <-good.bodies; got != tc.want {
					t.Errorf("retried request carried body %q, want %q", got, tc.want)
				}
			} else if good.hits.Load() != 0 {
				t.Errorf("request was retried (good backend hit %d times)", good.hits.Load())
			}
			waitInflightZero(t, pool)
		})
	}
}

// TestDialFailoverAnyMethod: a backend that cannot be reached is skipped
// for any method, body intact, even with retries off.
func TestDialFailoverAnyMethod(t *testing.T) {
	t.Parallel()
	good := newTestBackend(t, "good")
	pool := newTestPool(t, func(u *config.Upstream) { u.Balance = "first" }, "http://"+deadAddr(t), good.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	for _, method := range []string{http.MethodPost, http.MethodPatch, http.MethodPut} {
		body := strings.Repeat("upload-", 5000)
		req, _ := http.NewRequest(method, front.URL+"/", opaqueReader{strings.NewReader(body)})
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", method, res.StatusCode)
		}
		if got := <-good.bodies; got != body {
			t.Errorf("%s: good backend got %d bytes, want %d", method, len(got), len(body))
		}
	}
}

// TestRetryOnHeaderTimeout: a response-header timeout is retried for GET.
func TestRetryOnHeaderTimeout(t *testing.T) {
	t.Parallel()
	slow, good := newTestBackend(t, "slow"), newTestBackend(t, "good")
	slow.mode.Store(modeBlock)
	pool := newTestPool(t, func(u *config.Upstream) {
		u.Balance = "first"
		u.Retries = config.Retries{Max: 1, BudgetPercent: 100}
		u.Timeouts.ResponseHeader = config.Duration(100 * time.Millisecond)
	}, slow.URL, good.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	if code, body, _ := get(t, front.Client(), front.URL+"/"); code != http.StatusOK || body != "good" {
		t.Fatalf("got %d %q", code, body)
	}
	waitInflightZero(t, pool)
}

// TestRetryEachBackendOnce: retries go to backends not tried yet, so a
// pool of three failing backends sees three attempts, not 1 + max.
func TestRetryEachBackendOnce(t *testing.T) {
	t.Parallel()
	bs := []*testBackend{newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c")}
	for _, b := range bs {
		b.mode.Store(modeReset)
	}
	pool := newTestPool(t, func(u *config.Upstream) { u.Retries = config.Retries{Max: 10, BudgetPercent: 100} }, backendURLs(bs...)...)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	code, body, _ := get(t, front.Client(), front.URL+"/")
	if code != http.StatusBadGateway {
		t.Fatalf("status %d", code)
	}
	noAddress(t, body, pool)
	for _, b := range bs {
		if b.hits.Load() != 1 {
			t.Errorf("%s got %d attempts, want 1", b.name, b.hits.Load())
		}
	}
}

// TestRetryBudget: against a pool where every attempt fails, retries stay
// within budget_percent of the requests plus the small per-second minimum.
func TestRetryBudget(t *testing.T) {
	t.Parallel()
	bs := []*testBackend{newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c")}
	for _, b := range bs {
		b.mode.Store(modeReset)
	}
	pool := newTestPool(t, func(u *config.Upstream) { u.Retries = config.Retries{Max: 2, BudgetPercent: 20} }, backendURLs(bs...)...)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	const n = 200
	start := time.Now()
	for range n {
		if code, _, _ := get(t, front.Client(), front.URL+"/"); code != http.StatusBadGateway {
			t.Fatalf("status %d", code)
		}
	}
	elapsed := time.Since(start).Seconds()
	attempts := bs[0].hits.Load() + bs[1].hits.Load() + bs[2].hits.Load()
	limit := n*1.2 + minRetriesPerSecond*(1+elapsed) + 1
	t.Logf("%d requests, %d attempts in %.2fs (limit %.0f; without a budget %d)", n, attempts, elapsed, limit, 3*n)
	if float64(attempts) > limit {
		t.Errorf("%d attempts for %d requests, want at most %.0f", attempts, n, limit)
	}
	if attempts <= n {
		t.Errorf("%d attempts for %d requests: nothing was retried", attempts, n)
	}
}

func TestRetryBudgetTokens(t *testing.T) {
	t.Parallel()
	var b retryBudget
	now := int64(time.Hour)
	b.init(20, now)
	for i := range minRetriesPerSecond {
		if !b.withdraw(now) {
			t.Fatalf("starting retry %d refused", i)
		}
	}
	if b.withdraw(now) {
		t.Fatal("retry allowed with an empty budget")
	}
	for range 4 {
		b.request()
	}
	if b.withdraw(now) {
		t.Fatal("4 requests at 20% bought a retry")
	}
	b.request()
	if !b.withdraw(now) || b.withdraw(now) {
		t.Fatal("5 requests at 20% should buy exactly one retry")
	}
	now += int64(time.Second)
	for i := range minRetriesPerSecond {
		if !b.withdraw(now) {
			t.Fatalf("minimum retry %d after a second refused", i)
		}
	}
	if b.withdraw(now) {
		t.Fatal("more than the minimum after a second")
	}
	// Credit is capped: a long quiet spell buys at most budgetCap retries.
	now += int64(time.Hour)
	for range 100000 {
		b.request()
	}
	got := 0
	for b.withdraw(now) {
		got++
	}
	if got > budgetCap/tokensPerRetry+1 {
		t.Errorf("%d retries after a quiet spell, want at most %d", got, budgetCap/tokensPerRetry)
	}
}

// TestNoRetryAfterResponseStarted: once the response header went out, a
// backend that dies mid-body is not retried; the client's response is
// aborted.
func TestNoRetryAfterResponseStarted(t *testing.T) {
	t.Parallel()
	dying, good := newTestBackend(t, "dying"), newTestBackend(t, "good")
	dying.mode.Store(modeMidBody)
	pool := newTestPool(t, func(u *config.Upstream) {
		u.Balance = "first"
		u.Retries = config.Retries{Max: 2, BudgetPercent: 100}
	}, dying.URL, good.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	// The backend's response has no length, so the proxy flushes the
	// header and "partial" at once; then the client's response is cut.
	res, err := front.Client().Get(front.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "partial" || err == nil {
		t.Fatalf("status %d, body %q, read error %v; want 200, \"partial\" and an aborted body", res.StatusCode, body, err)
	}
	if dying.hits.Load() != 1 || good.hits.Load() != 0 {
		t.Errorf("attempts: dying %d, good %d; want exactly one", dying.hits.Load(), good.hits.Load())
	}
	waitInflightZero(t, pool)
}

func TestRetryableError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{io.EOF, true},
		{io.ErrUnexpectedEOF, true},
		{&attemptError{backend: &Backend{}, err: io.EOF}, true},
		{timeoutErr{}, true},
		{tls509Err, false},
		{errBodyDetached, false},
	}
	for _, tc := range tests {
		if got := retryableError(tc.err); got != tc.want {
			t.Errorf("retryableError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
