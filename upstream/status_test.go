package upstream

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// TestAllDown503: with no backend available the client gets 503 with a
// Retry-After that says when one may be back, and no backend address.
func TestAllDown503(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mod       func(*config.Upstream)
		setup     func(p *Pool, clock *fakeClock)
		wantAfter string
	}{
		{"all unhealthy", nil, func(p *Pool, _ *fakeClock) {
			for _, b := range p.Backends {
				b.SetHealthy(false)
			}
		}, "10"},
		{"all unhealthy with checks every 3s, rise 2", fastChecks(func(h *config.HealthCheck) {
			h.Interval = config.Duration(3 * time.Second)
		}), func(p *Pool, _ *fakeClock) {
			for _, b := range p.Backends {
				b.SetHealthy(false)
			}
		}, "6"},
		{"one ejected, the other unhealthy", passiveConfig(1, func(ph *config.PassiveHealth) {
			ph.Cooldown = config.Duration(30 * time.Second)
			ph.MaxEjectedPercent = 100
		}), func(p *Pool, clock *fakeClock) {
			p.recordFailure(p.Backends[0])
			p.Backends[1].SetHealthy(false)
			clock.advance(10*time.Second + time.Millisecond)
		}, "20"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := newTestBackend(t, "a"), newTestBackend(t, "b")
			pool := newTestPool(t, tc.mod, a.URL, b.URL)
			pool.log = quietOptions().Logger
			clock := newFakeClock()
			pool.clock = clock.now
			tc.setup(pool, clock)
			h := NewProxy(pool, quietOptions())

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != tc.wantAfter {
				t.Fatalf("got %d Retry-After %q, want 503 Retry-After %s", rec.Code, rec.Header().Get("Retry-After"), tc.wantAfter)
			}
			if rec.Body.String() != "503 Service Unavailable\n" {
				t.Errorf("body %q", rec.Body)
			}
			noAddress(t, rec.Body.String(), pool)

			// The same for a WebSocket handshake.
			ws := httptest.NewRequest(http.MethodGet, "/chat", nil)
			ws.Header.Set("Connection", "Upgrade")
			ws.Header.Set("Upgrade", "websocket")
			ws.Header.Set("Sec-WebSocket-Version", websocket.Version)
			ws.Header.Set("Sec-WebSocket-Key", websocket.NewKey())
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, ws)
			if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != tc.wantAfter {
				t.Errorf("websocket: got %d Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
			}
			if a.hits.Load()+b.hits.Load() != 0 {
				t.Error("a backend was contacted")
			}
		})
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	p := newTestPool(t, func(u *config.Upstream) {
		u.Name = "api"
		u.Balance = "least_conn"
		u.Backends[0].MaxConns = 10
		u.Backends[1].Weight = 3
		passiveConfig(1, func(ph *config.PassiveHealth) { ph.MaxEjectedPercent = 50 })(u)
		fastChecks(nil)(u)
	}, "http://user:secret@10.0.0.1:80", "http://10.0.0.2:80")
	p.clock = clock.now
	p.log = quietOptions().Logger
	p.recordFailure(p.Backends[1])
	p.Backends[0].inflight.Store(2)
	msg := "status 500, expected 200-399"
	p.Backends[0].checkErr.Store(&msg)

	st := p.Status()
	if st.Name != "api" || st.Balance != "least_conn" || !st.HealthChecks || len(st.Backends) != 2 {
		t.Fatalf("status %+v", st)
	}
	b0, b1 := st.Backends[0], st.Backends[1]
	if strings.Contains(b0.URL, "secret") || b0.Inflight != 2 || b0.MaxConns != 10 || b0.Ejected || b0.LastCheckError != msg {
		t.Errorf("backend 0: %+v", b0)
	}
	until := time.Now().Add(time.Minute)
	if !b1.Ejected || b1.Ejections != 1 || b1.Weight != 3 || b1.EjectedUntil.Sub(until).Abs() > 5*time.Second {
		t.Errorf("backend 1: %+v, want ejected until about %v", b1, until)
	}

	raw, err := json.Marshal([]PoolStatus{st})
	if err != nil {
		t.Fatal(err)
	}
	var decoded []map[string]any
	if err := json.Unmarshal(raw, &decoded); err != nil {
		t.Fatal(err)
	}
	backends := decoded[0]["backends"].([]any)
	first, second := backends[0].(map[string]any), backends[1].(map[string]any)
	for _, k := range []string{"url", "weight", "healthy", "ejected", "ejections", "inflight", "max_conns", "consecutive_failures", "last_check_error"} {
		if _, ok := first[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, raw)
		}
	}
	if _, ok := first["ejected_until"]; ok {
		t.Errorf("ejected_until present for a backend that is not ejected: %s", raw)
	}
	if _, ok := second["ejected_until"]; !ok {
		t.Errorf("ejected_until missing for an ejected backend: %s", raw)
	}
	if _, ok := second["last_check_error"]; ok {
		t.Errorf("empty last_check_error not omitted: %s", raw)
	}

	// The ejection ends by time.
	clock.advance(time.Minute)
	if p.Status().Backends[1].Ejected {
		t.Error("still ejected after the cooldown")
	}
}
