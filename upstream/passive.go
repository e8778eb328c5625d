package upstream

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Passive health: the forwarder reports each attempt's outcome, and a
// backend with PassiveHealth.MaxFails consecutive failures within Window is
// ejected (skipped by every balancer) for Cooldown. A failure is an attempt
// that got no response (dial error, timeout, connection reset or EOF before
// the response header) while the client was still there, and, with
// FailOn5xx, a 5xx response. Any other response resets the count.
//
// Each ejection of a backend that comes back and fails again doubles its
// cooldown, up to MaxCooldown; the doubling starts over once the backend
// has stayed in rotation for longer than its last cooldown (and at least
// Window). An ejection ends by time: the deadline is an atomic that the
// balancers read, and the first look after it clears it, so no timer
// goroutine is needed. At most MaxEjectedPercent of the pool's backends are
// ejected at once, and never the last one in rotation (healthy and not
// ejected).
//
// The counters are atomics on the hot path; the decision to eject takes a
// mutex, which only a backend crossing MaxFails reaches.
type passive struct {
	maxFails    int32
	window      int64 // nanoseconds
	cooldown    int64
	maxCooldown int64
	failOn5xx   bool
	maxEjected  int // backends that may be ejected at once

	mu sync.Mutex // serializes ejection decisions
}

// Defaults for zero durations of an enabled config.PassiveHealth (config.Load
// fills in the same; validation rejects zeros).
const (
	defaultPassiveWindow      = 10 * time.Second
	defaultPassiveCooldown    = 10 * time.Second
	defaultPassiveMaxCooldown = 5 * time.Minute
)

// newPassive returns nil when passive health is off (MaxFails 0).
func newPassive(c config.PassiveHealth, n int) *passive {
	if c.MaxFails <= 0 {
		return nil
	}
	ph := &passive{
		maxFails:    int32(min(c.MaxFails, 1<<30)),
		window:      int64(durationOr(c.Window, defaultPassiveWindow)),
		cooldown:    int64(durationOr(c.Cooldown, defaultPassiveCooldown)),
		maxCooldown: int64(durationOr(c.MaxCooldown, defaultPassiveMaxCooldown)),
		failOn5xx:   c.FailOn5xx,
		maxEjected:  n * min(max(c.MaxEjectedPercent, 0), 100) / 100,
	}
	ph.maxCooldown = max(ph.maxCooldown, ph.cooldown)
	return ph
}

// observeResponse records a response from b: a success, or with
// FailOn5xx a failure for a 5xx.
func (p *Pool) observeResponse(b *Backend, status int) {
	ph := p.passive
	if ph == nil {
		return
	}
	if ph.failOn5xx && status >= 500 {
		p.recordFailure(b)
		return
	}
	if b.fails.Load() != 0 {
		b.fails.Store(0)
	}
}

// observeError records an attempt on b that failed with err. Failures
// that say nothing about b (the client went away, the request body was
// handed to another attempt) are not counted.
func (p *Pool) observeError(ctx context.Context, b *Backend, err error) {
	if p.passive == nil || ctx.Err() != nil || errors.Is(err, errBodyDetached) {
		return
	}
	p.recordFailure(b)
}

func (p *Pool) recordFailure(b *Backend) {
	ph := p.passive
	now := p.clock()
	if b.ejected() {
		return // late failures of requests sent before the ejection
	}
	var n int32
	if b.fails.Load() == 0 || now-b.streakStart.Load() > ph.window {
		b.streakStart.Store(now)
		b.fails.Store(1)
		n = 1
	} else {
		n = b.fails.Add(1)
	}
	if n >= ph.maxFails {
		p.eject(b, now)
	}
}

// eject takes b out of rotation for its next cooldown, unless that would
// eject more than maxEjected backends or leave none in rotation; either
// way its failure count starts over.
func (p *Pool) eject(b *Backend, now int64) {
	ph := p.passive
	ph.mu.Lock()
	defer ph.mu.Unlock()
	b.fails.Store(0)
	if b.ejected() {
		return
	}
	ejected, inRotation := 0, 0
	for _, o := range p.Backends {
		switch {
		case o.ejected():
			ejected++
		case o != b && o.healthy.Load():
			inRotation++
		}
	}
	if ejected+1 > ph.maxEjected || inRotation == 0 {
		p.log.LogAttrs(context.Background(), slog.LevelWarn, "backend failing but not ejected: too many ejected already",
			slog.String("pool", p.Name), slog.String("backend", b.name),
			slog.Int("ejected", ejected), slog.Int("max_ejected", ph.maxEjected))
		return
	}
	if b.lastEjectEnd != 0 && now-b.lastEjectEnd > max(b.lastCooldown, ph.window) {
		b.level = 0 // it stayed good for a while: start over
	}
	d := ph.cooldown
	for range b.level {
		if d >= ph.maxCooldown/2 {
			d = ph.maxCooldown
			break
		}
		d *= 2
	}
	d = min(d, ph.maxCooldown)
	if d < ph.maxCooldown {
		b.level++
	}
	until := now + d
	b.lastEjectEnd, b.lastCooldown = until, d
	b.ejections.Add(1)
	b.ejectedUntil.Store(until)
	p.log.LogAttrs(context.Background(), slog.LevelWarn, "backend ejected after consecutive failures",
		slog.String("pool", p.Name), slog.String("backend", b.name),
		slog.Int("max_fails", int(ph.maxFails)), slog.Duration("cooldown", time.Duration(d)))
}
