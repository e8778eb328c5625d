package upstream

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// BenchmarkPick measures one Pick of each policy on an idle pool of five
// backends (weights 1..5 unless noted). Goal: no allocations.
func BenchmarkPick(b *testing.B) {
	weighted := []int{1, 2, 3, 4, 5}
	equal := []int{1, 1, 1, 1, 1}
	cases := []struct {
		name    string
		balance string
		weights []int
		req     func(p *Pool) *http.Request
	}{
		{"round_robin", "round_robin", weighted, nil},
		{"least_conn", "least_conn", weighted, nil},
		{"random_two", "random_two", weighted, nil},
		{"first", "first", weighted, nil},
		{"ip_hash", "ip_hash", equal, func(*Pool) *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			return r.WithContext(WithClientIP(r.Context(), netip.MustParseAddr("203.0.113.9")))
		}},
		{"ip_hash/weighted", "ip_hash", weighted, func(*Pool) *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			return r.WithContext(WithClientIP(r.Context(), netip.MustParseAddr("203.0.113.9")))
		}},
		{"ip_hash/remote_addr", "ip_hash", equal, func(*Pool) *http.Request {
			return httptest.NewRequest(http.MethodGet, "/", nil) // 192.0.2.1:1234
		}},
		{"header_hash", "header_hash", equal, func(*Pool) *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("X-User", "user-12345")
			return r
		}},
		{"header_hash/missing", "header_hash", equal, func(*Pool) *http.Request {
			return httptest.NewRequest(http.MethodGet, "/", nil)
		}},
		{"cookie", "cookie", weighted, func(p *Pool) *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Cookie", "session=abc; "+p.sticky.name+"="+p.sticky.values[2]+"; theme=dark")
			return r
		}},
		{"cookie/none", "cookie", weighted, func(*Pool) *http.Request {
			return httptest.NewRequest(http.MethodGet, "/", nil)
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			p := poolOf(b, tc.weights, withBalance(tc.balance))
			var r *http.Request
			if tc.req != nil {
				r = tc.req(p)
			}
			b.ReportAllocs()
			for b.Loop() {
				if p.balancer.Pick(r, p.Backends) == nil {
					b.Fatal("no backend")
				}
			}
		})
	}
}

// BenchmarkPickParallel is BenchmarkPick under contention on the shared
// atomic state (round-robin counter, in-flight counts).
func BenchmarkPickParallel(b *testing.B) {
	for _, balance := range []string{"round_robin", "least_conn", "random_two"} {
		b.Run(balance, func(b *testing.B) {
			p := poolOf(b, []int{1, 2, 3, 4, 5}, withBalance(balance))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					be := p.balancer.Pick(nil, p.Backends)
					be.tryAcquire()
					be.release()
				}
			})
		})
	}
}
