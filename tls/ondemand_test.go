package tls

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// fakeClock is an injectable clock for OnDemandPolicy.now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// askServer is a real ask endpoint that counts requests. decide maps the
// domain parameter to a status; down makes it drop connections.
type askServer struct {
	*httptest.Server
	hits   atomic.Int64
	down   atomic.Bool
	decide func(domain string) int
}

func newAskServer(t *testing.T, decide func(domain string) int) *askServer {
	t.Helper()
	s := &askServer{decide: decide}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Load() {
			panic(http.ErrAbortHandler) // the client sees a network error
		}
		if r.URL.Query().Get("token") != "secret" { // ask's own query kept
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(s.decide(r.URL.Query().Get("domain")))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *askServer) askURL() string { return s.URL + "/check?token=secret" }

func allowAll(string) int { return http.StatusOK }
func denyAll(string) int  { return http.StatusForbidden }

func matchExample(name string) bool { return strings.HasSuffix(name, ".example.com") }

// newTestPolicy builds a policy on a fake clock; zero cfg fields take defaults.
func newTestPolicy(cfg config.OnDemand, client *http.Client) (*OnDemandPolicy, *fakeClock) {
	clock := newFakeClock()
	p := NewOnDemandPolicy(cfg, matchExample, client, nil)
	p.now = clock.Now
	return p, clock
}

func wantErr(t *testing.T, got, want error) {
	t.Helper()
	if want == nil && got != nil || want != nil && !errors.Is(got, want) {
		t.Fatalf("Decide = %v, want %v", got, want)
	}
}

func wantHits(t *testing.T, s *askServer, want int64) {
	t.Helper()
	if got := s.hits.Load(); got != want {
		t.Fatalf("ask endpoint hit %d times, want %d", got, want)
	}
}

func TestOnDemandAllowCached(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, allowAll)
	p, clock := newTestPolicy(config.OnDemand{Ask: srv.askURL(), RateLimit: 1}, nil)
	ctx := t.Context()

	wantErr(t, p.Decide(ctx, "WWW.Example.COM."), nil)
	wantHits(t, srv, 1)
	// Decide applies no rate limit (CertMagic calls it before loading
	// stored certificates too): allowed again and again from the cache.
	for range 5 {
		wantErr(t, p.Decide(ctx, "www.example.com"), nil)
	}
	wantHits(t, srv, 1)
	clock.Advance(defaultAskTTL)
	wantErr(t, p.Decide(ctx, "www.example.com"), nil)
	wantHits(t, srv, 2)

	st := p.Stats()
	if st.Asks != 2 || st.Allowed != 7 || st.CacheHits != 5 || st.RateLimited != 0 || st.Reserved != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestOnDemandReserveSpaced(t *testing.T) {
	t.Parallel()
	p, clock := newTestPolicy(config.OnDemand{RateLimit: 100}, nil)

	wantErr(t, p.Reserve("www.example.com"), nil)
	// An attempt was just made: spaced by NameInterval (1m), case and
	// trailing dot ignored.
	wantErr(t, p.Reserve("WWW.example.com."), ErrRateLimited)
	clock.Advance(30 * time.Second)
	wantErr(t, p.Reserve("www.example.com"), ErrRateLimited)
	// Another name is not affected.
	wantErr(t, p.Reserve("other.example.com"), nil)
	clock.Advance(31 * time.Second)
	wantErr(t, p.Reserve("www.example.com"), nil)

	// Several names: all or nothing.
	wantErr(t, p.Reserve("a.example.com", "www.example.com"), ErrRateLimited)
	wantErr(t, p.Reserve("a.example.com"), nil) // not recorded by the refusal
	wantErr(t, p.Reserve(), ErrRateLimited)

	st := p.Stats()
	if st.Reserved != 4 || st.RateLimited != 3 || st.Asks != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestOnDemandReserveBucket(t *testing.T) {
	t.Parallel()
	p, clock := newTestPolicy(config.OnDemand{RateLimit: 2, RateWindow: config.Duration(time.Minute)}, nil)
	wantErr(t, p.Reserve("a.example.com"), nil)
	wantErr(t, p.Reserve("b.example.com"), nil)
	wantErr(t, p.Reserve("c.example.com"), ErrRateLimited)
	clock.Advance(30 * time.Second) // one token back (2 per minute)
	wantErr(t, p.Reserve("c.example.com", "d.example.com"), ErrRateLimited)
	wantErr(t, p.Reserve("c.example.com"), nil)
	wantErr(t, p.Reserve("d.example.com"), ErrRateLimited)
}

func TestOnDemandDeniedCached(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, denyAll)
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)
	for range 2 {
		wantErr(t, p.Decide(t.Context(), "evil.example.com"), ErrAskDenied)
	}
	wantHits(t, srv, 1)
}

func TestOnDemandNon200Denied(t *testing.T) {
	t.Parallel()
	statuses := map[string]int{
		"no-content.example.com": http.StatusNoContent,
		"redirect.example.com":   http.StatusFound, // not followed
		"error.example.com":      http.StatusInternalServerError,
	}
	srv := newAskServer(t, func(d string) int { return statuses[d] })
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)
	for name := range statuses {
		wantErr(t, p.Decide(t.Context(), name), ErrAskDenied)
	}
	wantHits(t, srv, int64(len(statuses)))
}

func TestOnDemandTTLExpiry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		decide func(string) int
		want   error
	}{
		{"allow", allowAll, nil},
		{"deny", denyAll, ErrAskDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newAskServer(t, tc.decide)
			ttl := 50 * time.Millisecond
			p, clock := newTestPolicy(config.OnDemand{
				Ask: srv.askURL(), AskTTL: config.Duration(ttl), NameInterval: config.Duration(ttl),
			}, nil)
			wantErr(t, p.Decide(t.Context(), "a.example.com"), tc.want)
			clock.Advance(ttl / 2)
			p.Decide(t.Context(), "a.example.com")
			wantHits(t, srv, 1)
			clock.Advance(ttl)
			wantErr(t, p.Decide(t.Context(), "a.example.com"), tc.want)
			wantHits(t, srv, 2)
		})
	}
}

func TestOnDemandRejectsWithoutAsking(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, allowAll)
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)
	long := strings.Repeat("a", 63) + "."
	for _, name := range []string{
		"",
		".",
		"other.org",                              // not matched
		"example.com",                            // not matched (suffix is .example.com)
		"a..b.example.com",                       // empty label
		"-a.example.com",                         // leading hyphen
		"a-.example.com",                         // trailing hyphen
		"a_b.example.com",                        // bad character
		"*.example.com",                          // wildcard
		"a.example.com..",                        // two trailing dots
		"bücher.example.com",                     // not punycode
		"a b.example.com",                        // space
		"1.2.3.4",                                // IPv4
		"::1",                                    // IPv6
		"127.1",                                  // numeric TLD
		strings.Repeat("a", 64) + ".example.com", // label > 63
		strings.Repeat(long, 5) + "example.com",  // > 253
		"x" + strings.Repeat("a.", 144) + "example.com", // 300 chars
	} {
		t.Run(fmt.Sprintf("%.20q", name), func(t *testing.T) {
			wantErr(t, p.Decide(t.Context(), name), ErrNotOnDemandName)
		})
	}
	wantHits(t, srv, 0)
	if st := p.Stats(); st.Asks != 0 || st.Allowed != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestOnDemandValidNames(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, allowAll)
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL(), RateLimit: 100}, nil)
	for _, name := range []string{
		"xn--bcher-kva.example.com",
		"a-b.example.com",
		"0a.example.com",
		"123.example.com",
		strings.Repeat("a", 63) + ".example.com",
		"trailing.example.com.",
	} {
		wantErr(t, p.Decide(t.Context(), name), nil)
	}
}

func TestNormalizeNameLength(t *testing.T) {
	t.Parallel()
	l63 := strings.Repeat("a", 63)
	longest := l63 + "." + l63 + "." + l63 + "." + strings.Repeat("b", 61) // 253
	if got, reason := normalizeName(longest + "."); got != longest || reason != "" {
		t.Fatalf("253-char name refused: %q", reason)
	}
	if _, reason := normalizeName(longest + "b"); reason == "" {
		t.Fatal("254-char name accepted")
	}
}

func TestOnDemandNoAskDeniesAll(t *testing.T) {
	t.Parallel()
	for _, ask := range []string{"", "::not a url", "/relative"} {
		p, _ := newTestPolicy(config.OnDemand{Ask: ask}, nil)
		wantErr(t, p.Decide(t.Context(), "a.example.com"), ErrAskDenied)
	}
}

func TestOnDemandAskDown(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	p, _ := newTestPolicy(config.OnDemand{Ask: closed.URL + "/check"}, nil)
	err := p.Decide(t.Context(), "a.example.com")
	wantErr(t, err, ErrAskFailed)
	if strings.Contains(err.Error(), closed.URL) {
		t.Fatalf("error leaks the ask URL: %v", err)
	}
}

func TestOnDemandAskRecovers(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, allowAll)
	srv.down.Store(true)
	p, clock := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)

	wantErr(t, p.Decide(t.Context(), "a.example.com"), ErrAskFailed)
	hits := srv.hits.Load()
	srv.down.Store(false)
	// The failure is remembered briefly: the endpoint is not hammered.
	wantErr(t, p.Decide(t.Context(), "a.example.com"), ErrAskFailed)
	wantHits(t, srv, hits)
	clock.Advance(maxFailTTL) // failure TTL = min(AskTTL, 10s), far below AskTTL
	wantErr(t, p.Decide(t.Context(), "a.example.com"), nil)
	wantHits(t, srv, hits+1)
}

func TestOnDemandAskTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.URL}, &http.Client{Timeout: 50 * time.Millisecond})
	wantErr(t, p.Decide(t.Context(), "slow.example.com"), ErrAskFailed)
}

func TestOnDemandCallerCancelDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
	}))
	t.Cleanup(srv.Close)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before srv.Close even if the test fails
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.URL}, nil)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Decide(ctx, "a.example.com") }()
	waitFor(t, func() bool { return hits.Load() == 1 })
	cancel()
	err := <-done
	wantErr(t, err, ErrAskFailed)
	wantErr(t, err, context.Canceled)

	// The ask still completes and its answer is cached for the next caller.
	unblock()
	waitFor(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.answers.len() == 1
	})
	wantErr(t, p.Decide(t.Context(), "a.example.com"), nil)
	if hits.Load() != 1 {
		t.Fatalf("ask hit %d times, want 1", hits.Load())
	}
}

// decideAll runs Decide for every name concurrently and tallies the results.
func decideAll(t *testing.T, p *OnDemandPolicy, names []string) map[error]int {
	t.Helper()
	return tallyAll(names, func(name string) error { return p.Decide(t.Context(), name) })
}

// reserveAll runs Reserve for every name concurrently and tallies the results.
func reserveAll(p *OnDemandPolicy, names []string) map[error]int {
	return tallyAll(names, func(name string) error { return p.Reserve(name) })
}

func tallyAll(names []string, decide func(string) error) map[error]int {
	var mu sync.Mutex
	tally := make(map[error]int)
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			err := decide(name)
			key := err
			for _, s := range []error{ErrNotOnDemandName, ErrAskDenied, ErrAskFailed, ErrRateLimited} {
				if errors.Is(err, s) {
					key = s
				}
			}
			mu.Lock()
			tally[key]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return tally
}

func randomNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("r%d-%x.example.com", i, rand.Uint64())
	}
	return names
}

func TestOnDemandConcurrentRandomNames(t *testing.T) {
	t.Parallel()
	t.Run("deny", func(t *testing.T) {
		t.Parallel()
		srv := newAskServer(t, denyAll)
		p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)
		tally := decideAll(t, p, randomNames(100))
		if tally[nil] != 0 || tally[ErrAskDenied] != 100 {
			t.Fatalf("results = %v, want 100 ErrAskDenied", tally)
		}
		if h := srv.hits.Load(); h > 100 {
			t.Fatalf("ask hit %d times, want at most 100", h)
		}
	})
	t.Run("allowed, rate limited at issuance", func(t *testing.T) {
		t.Parallel()
		srv := newAskServer(t, allowAll)
		p, _ := newTestPolicy(config.OnDemand{
			Ask: srv.askURL(), RateLimit: 10, RateWindow: config.Duration(time.Minute),
		}, nil)
		names := randomNames(100)
		if tally := decideAll(t, p, names); tally[nil] != 100 {
			t.Fatalf("Decide results = %v, want 100 allowed", tally)
		}
		tally := reserveAll(p, names)
		if tally[nil] != 10 || tally[ErrRateLimited] != 90 {
			t.Fatalf("Reserve results = %v, want 10 reserved and 90 ErrRateLimited", tally)
		}
	})
}

func TestOnDemandSingleflight(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := newAskServer(t, func(string) int { <-release; return http.StatusOK })
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, nil)

	names := make([]string, 20)
	for i := range names {
		names[i] = "same.example.com"
	}
	results := make(chan map[error]int)
	go func() { results <- decideAll(t, p, names) }()
	// Hold the one ask open until it has certainly been sent; callers
	// arriving meanwhile join it, later ones are served from the cache.
	waitFor(t, func() bool { return srv.hits.Load() >= 1 })
	close(release)
	tally := <-results
	wantHits(t, srv, 1)
	if tally[nil] != 20 {
		t.Fatalf("results = %v, want 20 allowed", tally)
	}
	// One issuance attempt; the rest are spaced by NameInterval.
	tally = reserveAll(p, names)
	if tally[nil] != 1 || tally[ErrRateLimited] != 19 {
		t.Fatalf("Reserve results = %v, want 1 reserved and 19 ErrRateLimited", tally)
	}
}

func TestOnDemandCacheBound(t *testing.T) {
	t.Parallel()
	srv := newAskServer(t, denyAll)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(client.CloseIdleConnections)
	p, _ := newTestPolicy(config.OnDemand{Ask: srv.askURL()}, client)

	const n, workers = 20000, 32
	names := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for name := range names {
				if err := p.Decide(t.Context(), name); !errors.Is(err, ErrAskDenied) {
					t.Errorf("Decide(%q) = %v, want ErrAskDenied", name, err)
				}
			}
		})
	}
	for i := range n {
		names <- fmt.Sprintf("n%d.example.com", i)
	}
	close(names)
	wg.Wait()

	p.mu.Lock()
	size, order := p.answers.len(), p.answers.order.Len()
	p.mu.Unlock()
	if size > maxOnDemandEntries || size != order {
		t.Fatalf("cache holds %d entries (list %d), bound %d", size, order, maxOnDemandEntries)
	}
	wantHits(t, srv, n)
}

func TestExpiringMap(t *testing.T) {
	t.Parallel()
	now := time.Unix(0, 0)
	m := newExpiringMap[int](3)
	for i := range 5 {
		m.set(fmt.Sprint(i), i, now.Add(time.Minute), now)
	}
	if m.len() != 3 {
		t.Fatalf("len = %d, want 3", m.len())
	}
	for k, want := range map[string]bool{"0": false, "1": false, "2": true, "4": true} {
		if _, ok := m.get(k, now); ok != want {
			t.Fatalf("get(%s) present = %v, want %v", k, ok, want)
		}
	}
	// Re-setting a key makes it the newest; expired entries go first.
	m.set("2", 22, now.Add(time.Hour), now)
	later := now.Add(2 * time.Minute)
	m.set("5", 5, later.Add(time.Minute), later)
	if m.len() != 2 {
		t.Fatalf("len after expiry = %d, want 2", m.len())
	}
	if v, ok := m.get("2", later); !ok || v != 22 {
		t.Fatalf("get(2) = %d, %v", v, ok)
	}
	if _, ok := m.get("5", later.Add(time.Minute)); ok || m.len() != 1 {
		t.Fatal("expired entry returned or kept")
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before deadline")
		}
		time.Sleep(time.Millisecond)
	}
}
