package upstream

import "time"

// PoolStatus is a snapshot of a pool for the admin API (JSON).
type PoolStatus struct {
	Name    string `json:"name"`
	Balance string `json:"balance"`
	// HealthChecks tells whether the pool has active health checks
	// (whether Start was called is not shown).
	HealthChecks bool            `json:"health_checks"`
	Backends     []BackendStatus `json:"backends"`
}

// BackendStatus is a snapshot of one backend.
type BackendStatus struct {
	URL    string `json:"url"` // userinfo redacted
	Weight int    `json:"weight"`
	// Healthy is the active health state; Ejected the passive one. A
	// backend takes requests when it is healthy, not ejected and below
	// MaxConns.
	Healthy      bool      `json:"healthy"`
	Ejected      bool      `json:"ejected"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	Ejections    int64     `json:"ejections"` // since the pool was built
	Inflight     int64     `json:"inflight"`
	MaxConns     int       `json:"max_conns"` // 0: no cap
	// ConsecutiveFailures counts the passive-health failures of the
	// current streak (requests that got no response, or 5xx with
	// fail_on_5xx).
	ConsecutiveFailures int `json:"consecutive_failures"`
	// LastCheckError is why the last health check failed; empty once one
	// passes.
	LastCheckError string `json:"last_check_error,omitempty"`
}

// Status returns a snapshot of the pool. Safe for concurrent use; the
// fields of one backend are read one by one, not as a transaction.
func (p *Pool) Status() PoolStatus {
	st := PoolStatus{
		Name: p.Name, Balance: p.balance, HealthChecks: p.health != nil,
		Backends: make([]BackendStatus, len(p.Backends)),
	}
	now, wall := p.clock(), time.Now()
	for i, b := range p.Backends {
		bs := BackendStatus{
			URL: b.name, Weight: b.Weight,
			Healthy:             b.healthy.Load(),
			Ejections:           b.ejections.Load(),
			Inflight:            b.inflight.Load(),
			MaxConns:            int(b.maxConns),
			ConsecutiveFailures: int(b.fails.Load()),
		}
		if until := b.ejectedUntil.Load(); until > now {
			bs.Ejected = true
			bs.EjectedUntil = wall.Add(time.Duration(until - now)).Round(time.Millisecond).UTC()
		}
		if e := b.checkErr.Load(); e != nil {
			bs.LastCheckError = *e
		}
		st.Backends[i] = bs
	}
	return st
}
