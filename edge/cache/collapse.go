package cache

import (
	"net/http"
	"sync"
	"time"
)

// flight is one forwarded request that others with the same key wait for.
// done is closed once the leader knows whether it stored a response: as soon
// as its response turns out not storable (so waiters need not wait for the
// whole body), once a revalidation's 304 has been applied, or after it
// stored or gave up. The flight leaves its group at that moment, so later
// requests start a new one.
type flight struct {
	g    *flightGroup
	key  string
	done chan struct{}
	once sync.Once
	// retry is written before done is closed: the leader gave up for a
	// reason of its own (its client went away, a write failed, the buffering
	// limit was reached), so the waiters collapse again behind one of them
	// rather than all going upstream.
	retry bool
}

// release ends the flight; retry is as for the field. Only the first call
// counts; a nil flight is ignored.
func (f *flight) release(retry bool) {
	if f == nil {
		return
	}
	f.once.Do(func() {
		f.g.mu.Lock()
		if f.g.m[f.key] == f {
			delete(f.g.m, f.key)
		}
		f.g.mu.Unlock()
		f.retry = retry
		close(f.done)
	})
}

// flightGroup tracks the forwards in progress per key. The map is touched
// only on misses, under a mutex held for a map operation.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

// join returns the flight in progress for key (leader false), or, when there
// is none and canLead, a new flight that the caller leads and must release.
// It returns nil, false when there is none and the caller may not lead.
func (g *flightGroup) join(key string, canLead bool) (f *flight, leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.m[key]; f != nil {
		return f, false
	}
	if !canLead {
		return nil, false
	}
	if g.m == nil {
		g.m = make(map[string]*flight)
	}
	f = &flight{g: g, key: key, done: make(chan struct{})}
	g.m[key] = f
	return f, true
}

// maxCollapseRounds bounds how many flights one request waits for in turn
// (a new round starts only when a leader gave up for a reason of its own).
const maxCollapseRounds = 3

// waitFlight blocks until f is released, deadline passes or the client goes
// away, and reports whether f was released.
func (c *Cache) waitFlight(r *http.Request, key string, f *flight, deadline time.Time) bool {
	if c.testHookWaiting != nil {
		c.testHookWaiting(key)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-f.done:
		return true
	case <-t.C:
		return false
	case <-r.Context().Done():
		return false
	}
}

const (
	// passTTL is how long a key whose response was not storable is
	// remembered; requests for it meanwhile go upstream without collapsing.
	passTTL = 10 * time.Second
	// maxPass bounds the keys remembered.
	maxPass = 10000
)

// passList remembers keys whose last response was not storable for reasons
// of the response itself (no-store, private, Set-Cookie, Vary: *, too large,
// no freshness...), so that requests for a slow uncacheable URL (a long
// poll, say) do not queue behind one another. Storing a response for the
// key forgets it. Times are on the Cache's clock.
type passList struct {
	mu sync.Mutex
	m  map[string]time.Time // key → end of the pass
}

func (p *passList) has(key string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.m[key]
	if ok && !now.Before(until) {
		delete(p.m, key)
		return false
	}
	return ok
}

func (p *passList) add(key string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = make(map[string]time.Time)
	}
	if _, ok := p.m[key]; !ok && len(p.m) >= maxPass {
		// Make room: expired keys among a few looked at, else the first of them
		// (map iteration order is random).
		var victim string
		seen := 0
		for k, until := range p.m {
			if !now.Before(until) {
				delete(p.m, k)
			} else if victim == "" {
				victim = k
			}
			if seen++; seen == 16 {
				break
			}
		}
		if len(p.m) >= maxPass {
			delete(p.m, victim)
		}
	}
	p.m[key] = now.Add(passTTL)
}

func (p *passList) forget(key string) {
	p.mu.Lock()
	delete(p.m, key)
	p.mu.Unlock()
}

func (p *passList) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}
