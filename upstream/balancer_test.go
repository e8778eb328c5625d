package upstream

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

var allPolicies = []string{"round_robin", "least_conn", "random_two", "ip_hash", "header_hash", "cookie", "first"}

func withBalance(balance string) func(*config.Upstream) {
	return func(u *config.Upstream) {
		u.Balance = balance
		if balance == "header_hash" {
			u.HashHeader = "X-User"
		}
	}
}

// keyedRequest is a request whose hash key (client IP and X-User) is i.
func keyedRequest(i int) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	r.RemoteAddr = netip.AddrPortFrom(ip, 1234).String()
	r.Header.Set("X-User", fmt.Sprintf("user-%d", i))
	return r
}

func TestRoundRobinExactCycle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		weights []int
		cycle   []int
	}{
		{[]int{1, 1, 1}, []int{0, 1, 2}},
		{[]int{5, 1, 1}, []int{0, 0, 1, 0, 2, 0, 0}},
		{[]int{2, 1}, []int{0, 1, 0}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.weights), func(t *testing.T) {
			t.Parallel()
			p := poolOf(t, tc.weights, nil)
			for round := range 3 {
				for i, want := range tc.cycle {
					if got := p.balancer.Pick(nil, p.Backends); got != p.Backends[want] {
						t.Fatalf("round %d pick %d: got %v, want backend %d", round, i, got, want)
					}
				}
			}
		})
	}
}

// TestWeightedDistribution: over 10,000 picks on an idle pool every policy
// that spreads load gives each backend its weight's share.
func TestWeightedDistribution(t *testing.T) {
	t.Parallel()
	weights := []int{1, 2, 3}
	const n = 10000
	tests := []struct {
		balance   string
		tolerance float64 // absolute, on shares
	}{
		{"round_robin", 0.001},
		{"least_conn", 0.001}, // idle: ties follow the weighted order
		{"cookie", 0.001},     // no cookie: round-robin
		{"random_two", 0.03},
		{"ip_hash", 0.03},
		{"header_hash", 0.03},
	}
	for _, tc := range tests {
		t.Run(tc.balance, func(t *testing.T) {
			t.Parallel()
			p := poolOf(t, weights, withBalance(tc.balance))
			counts := map[*Backend]int{}
			for i := range n {
				counts[p.balancer.Pick(keyedRequest(i), p.Backends)]++
			}
			for i, b := range p.Backends {
				got, want := float64(counts[b])/n, float64(weights[i])/6
				if math.Abs(got-want) > tc.tolerance {
					t.Errorf("backend %d (weight %d): share %.3f, want %.3f ± %.3f", i, weights[i], got, want, tc.tolerance)
				}
			}
		})
	}
}

// TestPoliciesSkipUnavailable: no policy picks a backend that is unhealthy,
// ejected or at max_conns; with none available, none is picked.
func TestPoliciesSkipUnavailable(t *testing.T) {
	t.Parallel()
	states := []struct {
		name string
		set  func(b *Backend, on bool)
	}{
		{"unhealthy", func(b *Backend, on bool) { b.SetHealthy(!on) }},
		{"ejected", func(b *Backend, on bool) {
			if on {
				b.ejectedUntil.Store(b.pool.clock() + int64(time.Hour))
			} else {
				b.ejectedUntil.Store(0)
			}
		}},
		{"full", func(b *Backend, on bool) {
			if on {
				b.inflight.Store(b.maxConns)
			} else {
				b.inflight.Store(0)
			}
		}},
	}
	for _, balance := range allPolicies {
		for _, st := range states {
			t.Run(balance+"/"+st.name, func(t *testing.T) {
				t.Parallel()
				p := poolOf(t, []int{1, 2, 1}, func(u *config.Upstream) {
					withBalance(balance)(u)
					for _, b := range u.Backends {
						b.MaxConns = 5
					}
				})
				st.set(p.Backends[0], true)
				for i := range 300 {
					if b := p.balancer.Pick(keyedRequest(i), p.Backends); b == nil || b == p.Backends[0] {
						t.Fatalf("pick %d: got %v with backend 0 %s", i, b, st.name)
					}
				}
				for _, b := range p.Backends {
					st.set(b, true)
				}
				if b := p.balancer.Pick(keyedRequest(1), p.Backends); b != nil {
					t.Fatalf("picked %v with every backend %s", b, st.name)
				}
				st.set(p.Backends[2], false)
				if b := p.balancer.Pick(keyedRequest(1), p.Backends); b != p.Backends[2] {
					t.Fatalf("picked %v, want the only available backend", b)
				}
			})
		}
	}
}

// TestPoliciesOnSubset: on a retry the balancer is given the backends not
// tried yet, and picks among those only.
func TestPoliciesOnSubset(t *testing.T) {
	t.Parallel()
	for _, balance := range allPolicies {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			p := poolOf(t, []int{1, 1, 1, 1}, withBalance(balance))
			sub := without(p.Backends, p.Backends[1])
			for i := range 200 {
				r := keyedRequest(i)
				if balance == "cookie" { // a valid cookie for the excluded backend
					r.Header.Set("Cookie", p.sticky.name+"="+p.sticky.values[1])
				}
				if b := p.balancer.Pick(r, sub); b == nil || b == p.Backends[1] {
					t.Fatalf("pick %d on the subset: %v", i, b)
				}
			}
		})
	}
}

// TestHashStability: removing one of 5 backends moves at most 25% of
// 10,000 keys (rendezvous hashing moves only that backend's ~20%), and a
// backend that goes down hands its keys over and gets them back.
func TestHashStability(t *testing.T) {
	t.Parallel()
	const keys = 10000
	for _, balance := range []string{"ip_hash", "header_hash"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			five := poolOf(t, []int{1, 1, 1, 1, 1}, withBalance(balance))
			// The same servers without the third: a new pool, as a reload builds.
			four := newTestPool(t, withBalance(balance),
				five.Backends[0].URL.String(), five.Backends[1].URL.String(),
				five.Backends[3].URL.String(), five.Backends[4].URL.String())
			before := make([]string, keys)
			moved, down := 0, 0
			for i := range keys {
				r := keyedRequest(i)
				before[i] = five.balancer.Pick(r, five.Backends).URL.Host
				after := four.balancer.Pick(r, four.Backends).URL.Host
				if after != before[i] {
					moved++
					if before[i] != five.Backends[2].URL.Host {
						t.Fatalf("key %d moved from %s, a backend that stayed", i, before[i])
					}
				}
				if before[i] == five.Backends[2].URL.Host {
					down++
				}
			}
			if moved > keys/4 {
				t.Errorf("%d of %d keys moved, want at most 25%%", moved, keys)
			}
			t.Logf("removing 1 of 5 backends moved %.1f%% of keys", 100*float64(moved)/keys)

			// Unhealthy: its keys go elsewhere, the others stay; back: all back.
			five.Backends[2].SetHealthy(false)
			for i := range keys {
				got := five.balancer.Pick(keyedRequest(i), five.Backends).URL.Host
				if (got != before[i]) != (before[i] == five.Backends[2].URL.Host) {
					t.Fatalf("key %d: %s with backend 2 down, was %s", i, got, before[i])
				}
			}
			five.Backends[2].SetHealthy(true)
			for i := range keys {
				if got := five.balancer.Pick(keyedRequest(i), five.Backends).URL.Host; got != before[i] {
					t.Fatalf("key %d: %s after backend 2 returned, was %s", i, got, before[i])
				}
			}
		})
	}
}

func TestHashKeys(t *testing.T) {
	t.Parallel()
	t.Run("header missing falls back to round robin", func(t *testing.T) {
		t.Parallel()
		p := poolOf(t, []int{1, 1, 1}, withBalance("header_hash"))
		for i := range 6 {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if i%2 == 1 {
				r.Header.Set("X-User", "") // empty counts as missing
			}
			if got := p.balancer.Pick(r, p.Backends); got != p.Backends[i%3] {
				t.Fatalf("pick %d: %v, want backend %d", i, got, i%3)
			}
		}
	})
	t.Run("header value decides", func(t *testing.T) {
		t.Parallel()
		p := poolOf(t, []int{1, 1, 1, 1}, withBalance("header_hash"))
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("X-User", "alice")
		want := p.balancer.Pick(r, p.Backends)
		for range 20 {
			if got := p.balancer.Pick(r, p.Backends); got != want {
				t.Fatalf("same key, different backends: %v and %v", want, got)
			}
		}
	})
	t.Run("ip_hash prefers the context's client IP", func(t *testing.T) {
		t.Parallel()
		p := poolOf(t, []int{1, 1, 1, 1, 1, 1, 1, 1}, withBalance("ip_hash"))
		peer := keyedRequest(1)
		want := p.balancer.Pick(keyedRequest(2), p.Backends)
		r := peer.WithContext(WithClientIP(peer.Context(), parseHostPort(keyedRequest(2).RemoteAddr)))
		for range 20 {
			if got := p.balancer.Pick(r, p.Backends); got != want {
				t.Fatalf("context IP not used: %v, want %v", got, want)
			}
		}
		if ip, ok := ClientIPFromContext(r.Context()); !ok || ip != netip.MustParseAddr("10.0.0.2") {
			t.Errorf("ClientIPFromContext = %v %v", ip, ok)
		}
	})
}

// TestIPHashThroughTrustedProxy: through the proxy, the key is the client
// address resolved from X-Forwarded-For of a trusted peer.
func TestIPHashThroughTrustedProxy(t *testing.T) {
	t.Parallel()
	bs := []*testBackend{newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c"), newTestBackend(t, "d")}
	pool := newTestPool(t, withBalance("ip_hash"), backendURLs(bs...)...)
	opts := quietOptions()
	opts.Trusted = NewTrustedProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	front := serveProxy(t, NewProxy(pool, opts))
	c := front.Client()
	for _, client := range []string{"203.0.113.7", "198.51.100.1", "2001:db8::1"} {
		var first string
		for i := range 10 {
			_, body, _ := get(t, c, front.URL+"/", "X-Forwarded-For", client)
			if i == 0 {
				first = body
			} else if body != first {
				t.Fatalf("client %s: went to %s after %s", client, body, first)
			}
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(WithClientIP(r.Context(), netip.MustParseAddr(client)))
		if want := pool.balancer.Pick(r, pool.Backends); bs[want.idx].name != first {
			t.Errorf("client %s served by %s, its hash says %s", client, first, bs[want.idx].name)
		}
	}
}

// TestIPHashPoolTrusted: the pool's own trusted proxies resolve the client
// address when the proxy has none configured.
func TestIPHashPoolTrusted(t *testing.T) {
	t.Parallel()
	bs := []*testBackend{newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c"), newTestBackend(t, "d")}
	u := upstreamConfig(t, backendURLs(bs...)...)
	u.Balance = "ip_hash"
	pool, err := NewPool(u, PoolOptions{
		Logger:  quietOptions().Logger,
		Trusted: NewTrustedProxies([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	front := serveProxy(t, NewProxy(pool, quietOptions())) // Options.Trusted nil
	served := map[string]bool{}
	for i := range 40 {
		client := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()
		_, body, _ := get(t, front.Client(), front.URL+"/", "X-Forwarded-For", client)
		served[body] = true
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(WithClientIP(r.Context(), netip.MustParseAddr(client)))
		if want := bs[pool.balancer.Pick(r, pool.Backends).idx].name; body != want {
			t.Fatalf("client %s served by %s, its hash says %s", client, body, want)
		}
	}
	if len(served) < 2 {
		t.Errorf("40 clients all went to %v: the forwarded address is not used", served)
	}
}

func TestRandomTwoPrefersLessLoaded(t *testing.T) {
	t.Parallel()
	p := poolOf(t, []int{1, 1, 1}, withBalance("random_two"))
	p.Backends[1].inflight.Store(50)
	counts := map[*Backend]int{}
	for range 3000 {
		counts[p.balancer.Pick(nil, p.Backends)]++
	}
	// Any pair holding backend 1 goes to the other; pairs are distinct, so
	// backend 1 never wins.
	if counts[p.Backends[1]] != 0 {
		t.Errorf("loaded backend picked %d times", counts[p.Backends[1]])
	}
	if counts[p.Backends[0]] < 1000 || counts[p.Backends[2]] < 1000 {
		t.Errorf("idle backends picked %d and %d times of 3000", counts[p.Backends[0]], counts[p.Backends[2]])
	}
	// Relative to weight: 4 in flight at weight 4 is lighter than 2 at weight 1.
	w := poolOf(t, []int{4, 1}, withBalance("random_two"))
	w.Backends[0].inflight.Store(4)
	w.Backends[1].inflight.Store(2)
	for range 100 {
		if got := w.balancer.Pick(nil, w.Backends); got != w.Backends[0] {
			t.Fatalf("picked %v, want the backend with less inflight per weight", got)
		}
	}
}

func TestLeastConnPick(t *testing.T) {
	t.Parallel()
	p := poolOf(t, []int{1, 1, 2}, withBalance("least_conn"))
	p.Backends[0].inflight.Store(3)
	p.Backends[1].inflight.Store(1)
	p.Backends[2].inflight.Store(4) // 4/2 = 2 per weight
	for range 10 {
		if got := p.balancer.Pick(nil, p.Backends); got != p.Backends[1] {
			t.Fatalf("picked %v, want backend 1", got)
		}
	}
	p.Backends[1].inflight.Store(3)
	for range 10 {
		if got := p.balancer.Pick(nil, p.Backends); got != p.Backends[2] {
			t.Fatalf("picked %v, want backend 2 (2 per weight)", got)
		}
	}
}

// TestLeastConnSteersAwayFromSlow sends requests through the proxy while a
// slow backend holds the ones it got: least_conn sends it at most one,
// where round-robin would send it half.
func TestLeastConnSteersAwayFromSlow(t *testing.T) {
	t.Parallel()
	slow, fast := newTestBackend(t, "slow"), newTestBackend(t, "fast")
	slow.mode.Store(modeBlock)
	pool := newTestPool(t, withBalance("least_conn"), slow.URL, fast.URL)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	c := front.Client()

	const n = 30
	var wg sync.WaitGroup
	results := make(chan string, n)
	answered := make(chan struct{}, n)
	for range n {
		wg.Go(func() {
			_, body, _, err := fetch(c, front.URL+"/")
			if err != nil {
				t.Errorf("GET: %v", err)
			}
			results <- body
			answered <- struct{}{}
		})
		// Next request once this one has either been answered by fast or
		// reached slow (and sits there).
		select {
		case <-slow.arrived:
		case <-answered:
			// The client can have the whole answer a moment before the
			// proxy closes the backend's body and the count drops.
			waitFor(t, 10*time.Second, "fast backend idle", func() bool { return pool.Backends[1].Inflight() == 0 })
		case <-time.After(10 * time.Second):
			t.Fatal("request neither answered nor arrived at the slow backend")
		}
	}
	if h := slow.hits.Load(); h > 1 {
		t.Errorf("slow backend got %d requests of %d, want at most 1", h, n)
	}
	if fast.hits.Load() < n-1 {
		t.Errorf("fast backend got %d requests of %d", fast.hits.Load(), n)
	}
	slow.unblock()
	wg.Wait()
	close(results)
	for body := range results {
		if body != "slow" && body != "fast" {
			t.Errorf("response %q", body)
		}
	}
	waitInflightZero(t, pool)
}

func TestFirstIsOrderedFailover(t *testing.T) {
	t.Parallel()
	p := poolOf(t, []int{1, 5, 1}, withBalance("first"))
	steps := []struct {
		down []int
		want int
	}{
		{nil, 0},
		{[]int{0}, 1},
		{[]int{0, 1}, 2},
		{[]int{1}, 0},
		{[]int{1, 2}, 0},
	}
	for _, st := range steps {
		for _, b := range p.Backends {
			b.SetHealthy(true)
		}
		for _, i := range st.down {
			p.Backends[i].SetHealthy(false)
		}
		for range 5 {
			if got := p.balancer.Pick(nil, p.Backends); got != p.Backends[st.want] {
				t.Fatalf("down %v: picked %v, want backend %d", st.down, got, st.want)
			}
		}
	}
}

func TestUnknownBalance(t *testing.T) {
	t.Parallel()
	for _, mod := range []func(*config.Upstream){
		func(u *config.Upstream) { u.Balance = "fastest" },
		func(u *config.Upstream) { u.Balance = "header_hash" }, // no hash_header
	} {
		u := upstreamConfig(t, "http://127.0.0.1:1")
		mod(u)
		if p, err := NewPool(u); err == nil {
			p.Close()
			t.Errorf("NewPool(balance %q) succeeded", u.Balance)
		}
	}
}

// TestRendezvousUniform checks the hash against a uniform spread for
// equal weights (no backend far from 1/N of random keys).
func TestRendezvousUniform(t *testing.T) {
	t.Parallel()
	p := poolOf(t, []int{1, 1, 1, 1, 1, 1, 1}, nil)
	counts := make([]int, len(p.Backends))
	for range 14000 {
		counts[rendezvous(p.Backends, rand.Uint64(), true).idx]++
	}
	for i, c := range counts {
		if c < 1600 || c > 2400 {
			t.Errorf("backend %d got %d of 14000 keys, want about 2000", i, c)
		}
	}
}
