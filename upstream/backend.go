package upstream

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// Backend is one server of a Pool. URL and Weight are fixed at NewPool; the
// hot-path state (in-flight count, active health, passive ejection, check
// and failure counters) is atomic, so a Backend is safe for concurrent use
// without locks.
//
// A backend is available to the balancers when it is healthy (active
// checks), not ejected (passive health) and below its max_conns.
type Backend struct {
	// URL is the backend's address: scheme http, https or h2c, and a host.
	URL *url.URL
	// Weight is the backend's share of picks (at least 1).
	Weight int

	inflight atomic.Int64
	healthy  atomic.Bool

	// Passive health (passive.go). ejectedUntil is a pool-clock deadline,
	// 0 when not ejected; it is cleared lazily by the first look after it.
	ejectedUntil atomic.Int64
	fails        atomic.Int32 // consecutive failures of the current streak
	streakStart  atomic.Int64 // pool-clock time of the streak's first failure
	ejections    atomic.Int64 // how many times the backend was ejected
	// Guarded by the pool's passive.mu.
	level        uint // doublings of the next cooldown
	lastEjectEnd int64
	lastCooldown int64

	// Active health (healthcheck.go): consecutive probe results and the
	// last failure, for Status.
	checkFails  atomic.Int32
	checkPasses atomic.Int32
	checkErr    atomic.Pointer[string]

	pool     *Pool  // owner: clock and slot signal
	idx      int    // position in pool.Backends
	id       string // stable id: hex of the first 8 bytes of SHA-256(URL)
	hash     uint64 // the same 8 bytes, for rendezvous hashing
	maxConns int64  // 0: no cap

	name   string            // URL for logs, userinfo redacted
	scheme string            // scheme on the wire: h2c travels as http
	rt     http.RoundTripper // the pool transport for this backend's scheme
	// upgradeRT carries WebSocket handshakes: rt itself for http and https
	// (net/http sends a request with Upgrade: websocket over HTTP/1.1 only,
	// never offering h2 in ALPN), an HTTP/1.1 transport for h2c backends,
	// whose prior-knowledge HTTP/2 transport cannot carry an Upgrade.
	upgradeRT http.RoundTripper
}

// Inflight is the number of requests currently forwarded to b whose
// response has not been fully relayed yet (an open WebSocket tunnel counts
// as one until it closes).
func (b *Backend) Inflight() int64 { return b.inflight.Load() }

// Healthy reports whether b passes its active health checks. Backends
// start healthy.
func (b *Backend) Healthy() bool { return b.healthy.Load() }

// SetHealthy marks b as healthy or not; an unhealthy backend is never
// picked (when no backend is available the proxy answers 503). For health
// checkers and tests; the pool's own checker (Pool.Start) calls it.
func (b *Backend) SetHealthy(ok bool) { b.healthy.Store(ok) }

// String is the backend's URL (without credentials), for logs.
func (b *Backend) String() string { return b.name }

// stableID returns the backend's id and hash from its URL: stable across
// restarts and instances, and not the address in clear.
func stableID(u *url.URL) (string, uint64) {
	sum := sha256.Sum256([]byte(u.String()))
	return hex.EncodeToString(sum[:8]), binary.BigEndian.Uint64(sum[:8])
}

// available reports whether a balancer may pick b now: healthy, not
// ejected and below max_conns. Only atomic loads, plus a clock read while
// an ejection is recorded.
func (b *Backend) available() bool {
	if !b.healthy.Load() {
		return false
	}
	if b.maxConns > 0 && b.inflight.Load() >= b.maxConns {
		return false
	}
	return !b.ejected()
}

// ejected reports whether b is ejected by passive health now. An ejection
// whose time has passed is cleared here (no timer goroutine).
func (b *Backend) ejected() bool {
	until := b.ejectedUntil.Load()
	if until == 0 {
		return false
	}
	if b.pool.clock() < until {
		return true
	}
	b.ejectedUntil.CompareAndSwap(until, 0)
	return false
}

// full reports whether b would be available but for its max_conns.
func (b *Backend) full() bool {
	return b.maxConns > 0 && b.healthy.Load() && !b.ejected() && b.inflight.Load() >= b.maxConns
}

// tryAcquire takes one of b's connection slots: it counts the request in
// flight, unless b is at max_conns. Every successful tryAcquire is matched
// by exactly one release.
func (b *Backend) tryAcquire() bool {
	if b.maxConns <= 0 {
		b.inflight.Add(1)
		return true
	}
	for {
		n := b.inflight.Load()
		if n >= b.maxConns {
			return false
		}
		if b.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives back the slot taken by tryAcquire and, for a capped
// backend, wakes requests queued for a slot.
func (b *Backend) release() {
	b.inflight.Add(-1)
	if b.maxConns > 0 && b.pool != nil {
		b.pool.slots.notify()
	}
}

// slotSignal wakes requests waiting for a connection slot (max_conns). A
// waiter registers, takes the current channel, looks for a slot once more
// and then waits on the channel; a release that sees a registered waiter
// closes the channel and installs a new one. Because the release frees its
// slot before it looks for waiters, and the waiter registers before it
// looks for a slot, no wake-up is lost. Releases without waiters cost one
// atomic load.
type slotSignal struct {
	waiters atomic.Int64
	ch      atomic.Pointer[chan struct{}]
}

func newSlotSignal() *slotSignal {
	s := &slotSignal{}
	ch := make(chan struct{})
	s.ch.Store(&ch)
	return s
}

func (s *slotSignal) notify() {
	if s.waiters.Load() == 0 {
		return
	}
	ch := make(chan struct{})
	close(*s.ch.Swap(&ch)) // each channel is swapped out, and closed, once
}

// queueWait is one request's wait for a slot: a single timer for the whole
// timeouts.queue, however many times the request wakes up.
type queueWait struct {
	timer *time.Timer
}

func (q *queueWait) stop() {
	if q.timer != nil {
		q.timer.Stop()
	}
}

// errQueueTimeout ends a wait for a slot that lasted timeouts.queue.
var errQueueTimeout = &noBackendError{retryAfter: time.Second, full: true}

// acquire picks an available backend among cands and takes a slot on it.
// When every candidate that is up is at max_conns, it waits up to the
// pool's queue timeout (in total, across calls with the same q) for a slot.
// Without any candidate up it fails at once with a *noBackendError.
func (p *Pool) acquire(r *http.Request, cands []*Backend, q *queueWait) (*Backend, error) {
	ctx := r.Context()
	for {
		if b := p.pickAndTake(r, cands); b != nil {
			return b, nil
		}
		if !anyFull(cands) {
			return nil, p.noBackend(cands)
		}
		if p.queue <= 0 {
			return nil, errQueueTimeout
		}
		if q.timer == nil {
			q.timer = time.NewTimer(p.queue)
		}
		p.slots.waiters.Add(1)
		ch := *p.slots.ch.Load()
		if b := p.pickAndTake(r, cands); b != nil {
			p.slots.waiters.Add(-1)
			return b, nil
		}
		var err error
		select {
		case <-ch:
		case <-q.timer.C:
			err = errQueueTimeout
		case <-ctx.Done():
			err = ctx.Err()
		}
		p.slots.waiters.Add(-1)
		if err != nil {
			return nil, err
		}
	}
}

// pickAndTake asks the balancer for a backend and takes a slot on it. A
// pick can lose the race for a backend's last slot; then the balancer,
// which now sees the backend full, is asked again, a bounded number of
// times.
func (p *Pool) pickAndTake(r *http.Request, cands []*Backend) *Backend {
	for range len(cands) + 1 {
		b := p.balancer.Pick(r, cands)
		if b == nil {
			return nil
		}
		if b.tryAcquire() {
			return b
		}
	}
	return nil
}

func anyFull(cands []*Backend) bool {
	for _, b := range cands {
		if b.full() {
			return true
		}
	}
	return false
}

// Bounds of the Retry-After sent when no backend is up.
const (
	retryAfterDefault = 10 * time.Second
	retryAfterMax     = 5 * time.Minute
)

// noBackend is the error for a request that finds no candidate up. Its
// Retry-After is the time until the earliest ejection among healthy
// candidates ends; else, with active checks, the time a backend needs to
// rise again (interval × rise); else 10 seconds.
func (p *Pool) noBackend(cands []*Backend) error {
	now := p.clock()
	var soonest int64
	for _, b := range cands {
		if until := b.ejectedUntil.Load(); until > now && b.healthy.Load() {
			if d := until - now; soonest == 0 || d < soonest {
				soonest = d
			}
		}
	}
	d := retryAfterDefault
	switch {
	case soonest > 0:
		d = time.Duration(soonest)
	case p.health != nil:
		d = p.health.interval * time.Duration(p.health.rise)
	}
	return &noBackendError{retryAfter: min(max(d, time.Second), retryAfterMax)}
}
