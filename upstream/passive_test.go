package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func passiveConfig(maxFails int, mod func(*config.PassiveHealth)) func(*config.Upstream) {
	return func(u *config.Upstream) {
		u.PassiveHealth = config.PassiveHealth{
			MaxFails:          maxFails,
			Window:            config.Duration(10 * time.Second),
			Cooldown:          config.Duration(time.Minute),
			MaxCooldown:       config.Duration(5 * time.Minute),
			MaxEjectedPercent: 50,
		}
		if mod != nil {
			mod(&u.PassiveHealth)
		}
	}
}

// TestPassiveEjection: a backend that resets connections is ejected after
// max_fails failures and gets nothing more; with retries on, clients never
// notice.
func TestPassiveEjection(t *testing.T) {
	t.Parallel()
	bad, good1, good2 := newTestBackend(t, "bad"), newTestBackend(t, "good1"), newTestBackend(t, "good2")
	bad.mode.Store(modeReset)
	log, logs := testLogger()
	u := upstreamConfig(t, bad.URL, good1.URL, good2.URL)
	passiveConfig(2, nil)(u)
	u.Retries = config.Retries{Max: 1, BudgetPercent: 100}
	pool, err := NewPool(u, PoolOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	for i := range 30 {
		if code, body, _ := get(t, front.Client(), front.URL+"/"); code != http.StatusOK || body == "bad" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if n := bad.hits.Load(); n != 2 {
		t.Errorf("bad backend got %d requests, want 2 (max_fails)", n)
	}
	st := pool.Status().Backends[0]
	if !st.Ejected || st.Ejections != 1 || st.EjectedUntil.Before(time.Now().Add(50*time.Second)) {
		t.Errorf("status %+v, want ejected for about a minute", st)
	}
	if !strings.Contains(logs.String(), "backend ejected") {
		t.Errorf("ejection not logged: %s", logs)
	}
	waitInflightZero(t, pool)
}

// TestPassiveCooldownDoubling follows one backend's ejections on a fake
// clock: cooldowns double up to max_cooldown and start over once the
// backend stayed good for a while; failures outside the window or broken
// by a success do not add up.
func TestPassiveCooldownDoubling(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	p := poolOf(t, []int{1, 1, 1}, passiveConfig(2, func(ph *config.PassiveHealth) {
		ph.Cooldown = config.Duration(time.Second)
		ph.MaxCooldown = config.Duration(5 * time.Second)
		ph.MaxEjectedPercent = 100
	}))
	p.clock = clock.now
	p.log = quietOptions().Logger
	b := p.Backends[0]
	failTwice := func() {
		p.recordFailure(b)
		p.recordFailure(b)
	}
	ejectedFor := func() time.Duration {
		if !b.ejected() {
			return 0
		}
		return time.Duration(b.ejectedUntil.Load() - clock.now())
	}

	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		failTwice()
		if got := ejectedFor(); got != want {
			t.Fatalf("ejection %d: cooldown %v, want %v", i+1, got, want)
		}
		if b.available() {
			t.Fatal("ejected backend is available")
		}
		clock.advance(want - time.Millisecond)
		if !b.ejected() {
			t.Fatal("ejection ended early")
		}
		clock.advance(time.Millisecond)
		if b.ejected() || !b.available() {
			t.Fatalf("ejection %d did not end after %v", i+1, want)
		}
	}
	if n := b.ejections.Load(); n != 5 {
		t.Errorf("%d ejections counted, want 5", n)
	}

	// Good for longer than the last cooldown and the window: start over.
	clock.advance(11 * time.Second)
	failTwice()
	if got := ejectedFor(); got != time.Second {
		t.Errorf("after a good spell: cooldown %v, want 1s", got)
	}
	clock.advance(time.Second)

	// Failures further apart than the window do not add up.
	p.recordFailure(b)
	clock.advance(11 * time.Second)
	p.recordFailure(b)
	if b.ejected() {
		t.Error("ejected for failures outside one window")
	}
	// A success starts the count over.
	p.observeResponse(b, http.StatusOK)
	p.recordFailure(b)
	if b.ejected() {
		t.Error("ejected although a success came between the failures")
	}
	if got := p.Status().Backends[0].ConsecutiveFailures; got != 1 {
		t.Errorf("consecutive_failures %d, want 1", got)
	}
	// A client that went away says nothing about the backend.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.observeError(ctx, b, context.Canceled)
	if b.fails.Load() != 1 {
		t.Errorf("a canceled request counted as a failure")
	}
}

func TestPassiveMaxEjectedPercent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n, percent int
		unhealthy  int // backends marked unhealthy (active) first, from the end
		want       int
	}{
		{4, 50, 0, 2},
		{4, 100, 0, 3}, // one always stays
		{4, 25, 0, 1},
		{2, 50, 0, 1},
		{1, 100, 0, 0},
		{5, 0, 0, 0},
		{3, 40, 0, 1},
		{2, 100, 1, 0}, // the other is down by active checks: keep this one
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d backends %d%% %d unhealthy", tc.n, tc.percent, tc.unhealthy), func(t *testing.T) {
			t.Parallel()
			weights := make([]int, tc.n)
			for i := range weights {
				weights[i] = 1
			}
			p := poolOf(t, weights, passiveConfig(1, func(ph *config.PassiveHealth) { ph.MaxEjectedPercent = tc.percent }))
			p.log = quietOptions().Logger
			for i := range tc.unhealthy {
				p.Backends[tc.n-1-i].SetHealthy(false)
			}
			for range 3 {
				for _, b := range p.Backends[:tc.n-tc.unhealthy] {
					p.recordFailure(b)
				}
			}
			ejected := 0
			for _, st := range p.Status().Backends {
				if st.Ejected {
					ejected++
				}
			}
			if ejected != tc.want {
				t.Errorf("%d ejected, want %d", ejected, tc.want)
			}
		})
	}
}

// TestPassive5xx: a 5xx answer counts as a failure only with fail_on_5xx.
func TestPassive5xx(t *testing.T) {
	t.Parallel()
	for _, failOn5xx := range []bool{false, true} {
		t.Run(fmt.Sprint("fail_on_5xx ", failOn5xx), func(t *testing.T) {
			t.Parallel()
			broken, good := newTestBackend(t, "broken"), newTestBackend(t, "good")
			broken.mode.Store(mode500)
			pool := newTestPool(t, passiveConfig(3, func(ph *config.PassiveHealth) { ph.FailOn5xx = failOn5xx }), broken.URL, good.URL)
			pool.log = quietOptions().Logger
			front := serveProxy(t, NewProxy(pool, quietOptions()))
			fivexx := 0
			for range 20 {
				if code, _, _ := get(t, front.Client(), front.URL+"/"); code == http.StatusInternalServerError {
					fivexx++
				}
			}
			want := 10 // round-robin: every other request
			if failOn5xx {
				want = 3
			}
			if fivexx != want || broken.hits.Load() != int64(want) {
				t.Errorf("%d answers 500 (backend hit %d times), want %d", fivexx, broken.hits.Load(), want)
			}
			if got := pool.Status().Backends[0].Ejected; got != failOn5xx {
				t.Errorf("ejected %v", got)
			}
		})
	}
}

// TestPassiveIgnoresDetachedBody: an attempt whose body went to another
// attempt is not the backend's fault.
func TestPassiveIgnoresDetachedBody(t *testing.T) {
	t.Parallel()
	p := poolOf(t, []int{1, 1}, passiveConfig(1, nil))
	p.observeError(context.Background(), p.Backends[0], fmt.Errorf("wrapped: %w", errBodyDetached))
	if p.Backends[0].fails.Load() != 0 || p.Backends[0].ejected() {
		t.Error("detached body counted")
	}
	p.log = quietOptions().Logger
	p.observeError(context.Background(), p.Backends[0], errors.New("reset"))
	if !p.Backends[0].ejected() {
		t.Error("a real failure with max_fails 1 did not eject")
	}
}
