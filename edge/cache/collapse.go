package cache

import (
	"net/http"
	"sync"
	"time"
)

// flight is one forwarded request that others with the same key wait for.
// done is closed once the leader knows whether it stored a response: as soon
// as its response turns out not storable (so waiters need not wait for the
// whole body), or after it stored or gave up.
type flight struct {
	done chan struct{}
	once sync.Once
}

func (f *flight) release() {
	if f != nil {
		f.once.Do(func() { close(f.done) })
	}
}

// flightGroup tracks the forwards in progress per key. The map is touched
// only on misses, under a mutex held for a map operation.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

// join returns the flight in progress for key (leader false), or, when there
// is none and canLead, a new flight that the caller leads and must finish.
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
	f = &flight{done: make(chan struct{})}
	g.m[key] = f
	return f, true
}

// finish ends the leader's flight: later requests start their own.
func (g *flightGroup) finish(key string, f *flight) {
	g.mu.Lock()
	if g.m[key] == f {
		delete(g.m, key)
	}
	g.mu.Unlock()
	f.release()
}

// waitFlight blocks until f is released, the collapse wait passes or the
// client goes away, and reports whether f was released.
func (c *Cache) waitFlight(r *http.Request, key string, f *flight) bool {
	if c.testHookWaiting != nil {
		c.testHookWaiting(key)
	}
	t := time.NewTimer(c.collapseWait)
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
