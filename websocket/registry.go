package websocket

import (
	"context"
	"errors"
	"sync"
)

// Errors from Registry.Reserve.
var (
	// ErrTooManyTunnels: the route already has its limit of open tunnels.
	ErrTooManyTunnels = errors.New("websocket: too many open tunnels on this route")
	// ErrRegistryClosed: the Registry was closed (the server is stopping).
	ErrRegistryClosed = errors.New("websocket: server is shutting down")
)

// Registry keeps every tunnel that is reserved or running, by route key: it
// enforces the per-route limits of Reserve and lets a server close tunnels
// deliberately (all of them at shutdown, those of changed routes on reload),
// which matters because hijacked connections are invisible to
// http.Server.Shutdown and HTTP/2 and HTTP/3 tunnels would hold it up until
// its timeout.
//
// A route key is any string the caller chooses (Gatehouse uses the site's
// first host and the route's path); counts and limits are per key, so a
// limit survives a reload that rebuilds the route's handler with the same
// key.
//
// The zero Registry is not usable; call NewRegistry. All methods are safe for
// concurrent use.
type Registry struct {
	mu     sync.Mutex
	open   map[*Tunnel]struct{}
	perKey map[string]int
	closed bool
	empty  chan struct{} // closed while open is empty
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	empty := make(chan struct{})
	close(empty)
	return &Registry{open: make(map[*Tunnel]struct{}), perKey: make(map[string]int), empty: empty}
}

// Reserve returns a new Tunnel counted under key, or ErrTooManyTunnels if
// key already has limit tunnels (limit <= 0 means no limit), or
// ErrRegistryClosed after Close. Reserve before contacting the backend; the
// tunnel counts until its Run returns or Release is called.
func (r *Registry) Reserve(key string, limit int) (*Tunnel, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrRegistryClosed
	}
	if limit > 0 && r.perKey[key] >= limit {
		return nil, ErrTooManyTunnels
	}
	t := &Tunnel{reg: r, key: key}
	if len(r.open) == 0 {
		r.empty = make(chan struct{})
	}
	r.open[t] = struct{}{}
	r.perKey[key]++
	return t, nil
}

// remove forgets t (once).
func (r *Registry) remove(t *Tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.open[t]; !ok {
		return
	}
	delete(r.open, t)
	if r.perKey[t.key]--; r.perKey[t.key] <= 0 {
		delete(r.perKey, t.key)
	}
	if len(r.open) == 0 {
		close(r.empty)
	}
}

// Wait blocks until no tunnel is reserved or running (their Run has
// returned) or ctx is done, whose error it then returns. After Close it
// waits for the closed tunnels to wind down.
func (r *Registry) Wait(ctx context.Context) error {
	r.mu.Lock()
	empty := r.empty
	r.mu.Unlock()
	select {
	case <-empty:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Count is the number of tunnels reserved or running.
func (r *Registry) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.open)
}

// CountKey is the number of tunnels reserved or running under key.
func (r *Registry) CountKey(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.perKey[key]
}

// CloseAll closes every tunnel reserved or running and returns how many it
// closed. New tunnels may still be reserved; see Close for shutdown. Closing
// does not wait for the tunnels' Run to return.
func (r *Registry) CloseAll() int {
	return r.CloseMatching(func(string) bool { return true })
}

// CloseMatching closes the tunnels whose route key satisfies match (called
// without the Registry's lock held) and returns how many it closed.
func (r *Registry) CloseMatching(match func(key string) bool) int {
	r.mu.Lock()
	list := make([]*Tunnel, 0, len(r.open))
	for t := range r.open {
		list = append(list, t)
	}
	r.mu.Unlock()
	n := 0
	for _, t := range list {
		if match(t.key) {
			t.Close()
			n++
		}
	}
	return n
}

// Close makes every later Reserve fail with ErrRegistryClosed, then closes
// all tunnels (CloseAll) and returns how many it closed. For shutdown; it is
// safe to call more than once.
func (r *Registry) Close() int {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return r.CloseAll()
}
