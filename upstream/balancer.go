package upstream

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"sync/atomic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Balancer chooses the backend for a request (one per balance: policy).
//
// Pick returns one of backends that is available (healthy, not ejected,
// below its max_conns), or nil when none is. backends is the pool's
// Backends on a first attempt and a subset of it (in pool order, without
// the backends already tried) on a retry. r is the request as it will be
// sent (headers rewritten, the client's context); Pick must not modify it.
//
// Implementations keep only atomic state, are safe for concurrent use and
// do not allocate. The forwarder takes the slot on the picked backend
// itself, so a Pick that loses a race for a backend's last slot is simply
// repeated.
type Balancer interface {
	Pick(r *http.Request, backends []*Backend) *Backend
}

// maxOrderLen bounds the precomputed weighted round-robin sequence.
const maxOrderLen = 4096

// newBalancer builds the policy named by u.Balance ("" is round_robin)
// over the pool's backends.
func newBalancer(u *config.Upstream, backends []*Backend) (Balancer, error) {
	rr := newRoundRobin(backends)
	switch u.Balance {
	case "", "round_robin":
		return rr, nil
	case "least_conn":
		return &leastConn{rr: rr}, nil
	case "random_two":
		return newRandomTwo(backends), nil
	case "first":
		return first{}, nil
	case "ip_hash":
		return &hashBalancer{fallback: rr, equalWeights: equalWeights(backends)}, nil
	case "header_hash":
		if u.HashHeader == "" {
			return nil, fmt.Errorf("balance header_hash needs hash_header")
		}
		return &hashBalancer{
			header:       textproto.CanonicalMIMEHeaderKey(u.HashHeader),
			fallback:     rr,
			equalWeights: equalWeights(backends),
		}, nil
	case "cookie":
		return newCookieBalancer(u.Sticky, backends, rr), nil
	}
	return nil, fmt.Errorf("unknown balance %q", u.Balance)
}

// sameSlice reports whether a and b are the same slice (the pool's
// Backends, as opposed to a retry's subset).
func sameSlice(a, b []*Backend) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// roundRobin is nginx's smooth weighted round-robin: a precomputed period
// in which each backend appears weight times, interleaved, walked by one
// atomic counter. An unavailable backend is skipped by walking on along
// the period, so the others keep their relative weights. On a retry's
// subset the period does not apply and the subset is walked in turn.
type roundRobin struct {
	all   []*Backend
	order []int // one period of indexes into all
	next  atomic.Uint64
}

func newRoundRobin(backends []*Backend) *roundRobin {
	w := make([]int, len(backends))
	for i, b := range backends {
		w[i] = b.Weight
	}
	return &roundRobin{all: backends, order: smoothOrder(w)}
}

func (rr *roundRobin) Pick(_ *http.Request, backends []*Backend) *Backend {
	n := rr.next.Add(1) - 1
	if !sameSlice(backends, rr.all) {
		return rotate(backends, n)
	}
	l := uint64(len(rr.order))
	for j := range l {
		if b := backends[rr.order[(n+j)%l]]; b.available() {
			return b
		}
	}
	return nil
}

// start is the index, in backends, at which the weighted order would
// start for this pick; for tie-breaking policies.
func (rr *roundRobin) start(backends []*Backend) int {
	n := rr.next.Add(1) - 1
	if !sameSlice(backends, rr.all) {
		return int(n % uint64(len(backends)))
	}
	return rr.order[n%uint64(len(rr.order))]
}

// rotate returns the first available backend from position n (mod len).
func rotate(backends []*Backend, n uint64) *Backend {
	l := uint64(len(backends))
	for j := range l {
		if b := backends[(n+j)%l]; b.available() {
			return b
		}
	}
	return nil
}

// leastConn picks the available backend with the fewest requests in flight
// relative to its weight (inflight/weight, compared by cross-multiplying).
// The scan starts where weighted round-robin would, and the first of equals
// wins, so an idle pool is spread by weight rather than piled on one
// backend.
type leastConn struct{ rr *roundRobin }

func (lc *leastConn) Pick(_ *http.Request, backends []*Backend) *Backend {
	if len(backends) == 0 {
		return nil
	}
	start := lc.rr.start(backends)
	var best *Backend
	var bestLoad int64
	for j := range backends {
		b := backends[(start+j)%len(backends)]
		if !b.available() {
			continue
		}
		load := b.inflight.Load()
		if best == nil || load*int64(best.Weight) < bestLoad*int64(b.Weight) {
			best, bestLoad = b, load
		}
	}
	return best
}

// randomTwo is the power of two random choices: two distinct backends are
// drawn (by weight, on the pool's backends) and the one with less
// inflight/weight wins; the first drawn wins a tie, so an idle pool is
// spread by weight. A drawn backend that is unavailable is replaced by the
// next available one in pool order.
type randomTwo struct {
	all   []*Backend
	cum   []int // cumulative weights of all
	total int
}

func newRandomTwo(backends []*Backend) *randomTwo {
	r := &randomTwo{all: backends, cum: make([]int, len(backends))}
	for i, b := range backends {
		r.total += b.Weight
		r.cum[i] = r.total
	}
	return r
}

func (rt *randomTwo) Pick(_ *http.Request, backends []*Backend) *Backend {
	n := len(backends)
	switch n {
	case 0:
		return nil
	case 1:
		if backends[0].available() {
			return backends[0]
		}
		return nil
	}
	var i, j int
	if sameSlice(backends, rt.all) {
		i, j = rt.draw(), rt.draw()
	} else {
		i, j = rand.IntN(n), rand.IntN(n)
	}
	if j == i {
		j = (i + 1 + rand.IntN(n-1)) % n
	}
	x := nextAvailable(backends, i, -1)
	if x < 0 {
		return nil
	}
	y := nextAvailable(backends, j, x)
	if y < 0 {
		return backends[x]
	}
	a, b := backends[x], backends[y]
	if b.inflight.Load()*int64(a.Weight) < a.inflight.Load()*int64(b.Weight) {
		return b
	}
	return a
}

// draw returns an index into all with probability weight/total.
func (rt *randomTwo) draw() int {
	v := rand.IntN(rt.total)
	lo, hi := 0, len(rt.cum)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rt.cum[m] > v {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// nextAvailable is the first index from i (wrapping) of an available
// backend other than the one at skip, or -1.
func nextAvailable(backends []*Backend, i, skip int) int {
	for k := range len(backends) {
		j := (i + k) % len(backends)
		if j != skip && backends[j].available() {
			return j
		}
	}
	return -1
}

// first picks the first available backend in configuration order: all
// traffic goes to the first, and fails over down the list.
type first struct{}

func (first) Pick(_ *http.Request, backends []*Backend) *Backend {
	for _, b := range backends {
		if b.available() {
			return b
		}
	}
	return nil
}

// smoothOrder returns one period of nginx's smooth weighted round-robin over
// weights (all >= 1): each index appears weight times, interleaved so that a
// heavy backend never gets a long run. Weights are reduced by their greatest
// common divisor and scaled down if the period would exceed maxOrderLen.
func smoothOrder(weights []int) []int {
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	total := 0
	w := make([]int, len(weights))
	for i, x := range weights {
		w[i] = x / g
		total += w[i]
	}
	if total > maxOrderLen {
		scaled := 0
		for i := range w {
			w[i] = max(w[i]*maxOrderLen/total, 1)
			scaled += w[i]
		}
		total = scaled
	}
	order := make([]int, 0, total)
	current := make([]int, len(w))
	for range total {
		best := 0
		for i := range w {
			current[i] += w[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		order = append(order, best)
	}
	return order
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func equalWeights(backends []*Backend) bool {
	for _, b := range backends {
		if b.Weight != backends[0].Weight {
			return false
		}
	}
	return true
}
