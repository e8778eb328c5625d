package upstream

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestNewPoolErrors(t *testing.T) {
	t.Parallel()
	badPEM := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(badPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		u       *config.Upstream
		wantErr string
	}{
		{"nil", nil, "nil configuration"},
		{"no backends", &config.Upstream{Name: "api"}, `upstream "api": no backends`},
		{"nil url", &config.Upstream{Name: "api", Backends: []*config.Backend{{}}}, "no url"},
		{"bad scheme", upstreamConfig(t, "ftp://127.0.0.1:21"), "unsupported scheme"},
		{"no host", upstreamConfig(t, "http:///x"), "no host"},
		{"path", upstreamConfig(t, "http://127.0.0.1:1/base"), "must not have a path"},
		{"query", upstreamConfig(t, "http://127.0.0.1:1?a=b"), "must not have a path"},
		{"missing CA", func() *config.Upstream {
			u := upstreamConfig(t, "https://127.0.0.1:1")
			u.TLS.CA = filepath.Join(t.TempDir(), "missing.pem")
			return u
		}(), "reading tls ca"},
		{"CA without PEM", func() *config.Upstream {
			u := upstreamConfig(t, "https://127.0.0.1:1")
			u.TLS.CA = badPEM
			return u
		}(), "no PEM certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := NewPool(tc.u)
			if err == nil {
				p.Close()
				t.Fatal("NewPool succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewPool(t *testing.T) {
	t.Parallel()
	u := upstreamConfig(t, "http://127.0.0.1:1", "https://127.0.0.1:2", "h2c://127.0.0.1:3", "http://user:secret@127.0.0.1:4/")
	u.Name = "api"
	u.Backends[0].Weight = 0
	u.Backends[1].Weight = 3
	u.TLS.CA = "" // system roots
	p, err := NewPool(u)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Name != "api" || len(p.Backends) != 4 {
		t.Fatalf("pool %q with %d backends", p.Name, len(p.Backends))
	}
	if len(p.transports) != 2 {
		t.Errorf("%d transports, want 2 (h1 and h2c)", len(p.transports))
	}
	if w := p.Backends[0].Weight; w != 1 {
		t.Errorf("weight 0 became %d, want 1", w)
	}
	if got := p.Backends[2].scheme; got != "http" {
		t.Errorf("h2c wire scheme %q, want http", got)
	}
	if p.Backends[2].rt == p.Backends[0].rt {
		t.Error("h2c backend shares the HTTP/1 transport")
	}
	if s := p.Backends[3].String(); strings.Contains(s, "secret") {
		t.Errorf("backend name %q leaks the password", s)
	}
	for _, b := range p.Backends {
		if !b.Healthy() || b.Inflight() != 0 {
			t.Errorf("%s: healthy %v inflight %d", b, b.Healthy(), b.Inflight())
		}
	}
	// The configuration's URL is not shared.
	u.Backends[0].URL.Host = "changed"
	if p.Backends[0].URL.Host == "changed" {
		t.Error("pool shares the configuration's URL")
	}
	p.Close()
	p.Close() // twice is fine
}

func TestSmoothOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		weights []int
		want    []int
	}{
		{[]int{1}, []int{0}},
		{[]int{1, 1, 1}, []int{0, 1, 2}},
		{[]int{2, 2}, []int{0, 1}}, // reduced by the gcd
		{[]int{5, 1, 1}, []int{0, 0, 1, 0, 2, 0, 0}},
		{[]int{3, 1}, []int{0, 0, 1, 0}},
	}
	for _, tc := range tests {
		got := smoothOrder(tc.weights)
		if !equalInts(got, tc.want) {
			t.Errorf("smoothOrder(%v) = %v, want %v", tc.weights, got, tc.want)
		}
	}
	big := smoothOrder([]int{100000, 1})
	if len(big) > maxOrderLen+1 {
		t.Errorf("order of %d entries, want at most %d", len(big), maxOrderLen+1)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPick(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, nil, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")
	counts := map[*Backend]int{}
	for range 30 {
		counts[p.balancer.Pick(nil, p.Backends)]++
	}
	for i, b := range p.Backends {
		if counts[b] != 10 {
			t.Errorf("backend %d picked %d times, want 10", i, counts[b])
		}
	}

	p.Backends[1].SetHealthy(false)
	for range 30 {
		if b := p.balancer.Pick(nil, p.Backends); b == p.Backends[1] || b == nil {
			t.Fatalf("picked %v while healthy backends exist", b)
		}
	}
	// Behaviour change: with every backend unhealthy there is no backend
	// (the proxy answers 503) instead of plain round-robin.
	for _, b := range p.Backends {
		b.SetHealthy(false)
	}
	if b := p.balancer.Pick(nil, p.Backends); b != nil {
		t.Errorf("with every backend unhealthy, picked %v; want none", b)
	}
}

func TestPoolCopiesURLWithoutSlash(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, nil, "http://127.0.0.1:1/")
	if got := p.Backends[0].URL.String(); got != (&url.URL{Scheme: "http", Host: "127.0.0.1:1"}).String() {
		t.Errorf("backend URL %q", got)
	}
}
