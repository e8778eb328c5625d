package upstream

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	t.Parallel()
	trusted := NewTrustedProxies([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("fd00::/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
	})
	tests := []struct {
		name    string
		trusted *TrustedProxies
		remote  string
		xff     []string
		want    string // "" for an invalid address
	}{
		{"untrusted peer ignores XFF", trusted, "203.0.113.9:4000", []string{"1.1.1.1"}, "203.0.113.9"},
		{"nil receiver trusts nobody", nil, "10.0.0.1:4000", []string{"1.1.1.1"}, "10.0.0.1"},
		{"trusted peer without XFF", trusted, "10.0.0.1:4000", nil, "10.0.0.1"},
		{"trusted peer, one client", trusted, "10.0.0.1:4000", []string{"1.1.1.1"}, "1.1.1.1"},
		{"right-most untrusted wins", trusted, "10.0.0.1:4000", []string{"6.6.6.6, 1.1.1.1, 10.0.0.2"}, "1.1.1.1"},
		{"all trusted gives left-most", trusted, "10.0.0.1:4000", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"garbage stops the walk", trusted, "10.0.0.1:4000", []string{"1.1.1.1, nonsense, 10.0.0.2"}, "10.0.0.2"},
		{"garbage at the right gives the peer", trusted, "10.0.0.1:4000", []string{"1.1.1.1, junk"}, "10.0.0.1"},
		{"empty entry is garbage", trusted, "10.0.0.1:4000", []string{"1.1.1.1,"}, "10.0.0.1"},
		{"several XFF lines in order", trusted, "10.0.0.1:4000", []string{"1.1.1.1", "10.0.0.5"}, "1.1.1.1"},
		{"entries with ports", trusted, "10.0.0.1:4000", []string{"1.1.1.1:5555, 10.0.0.2:80"}, "1.1.1.1"},
		{"bracketed IPv6 with port", trusted, "[fd00::1]:4000", []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"bracketed IPv6", trusted, "[fd00::1]:4000", []string{"[2001:db8::2]"}, "2001:db8::2"},
		{"IPv4-mapped peer is trusted as IPv4", trusted, "[::ffff:10.0.0.1]:4000", []string{"1.1.1.1"}, "1.1.1.1"},
		{"IPv4-mapped entry unmapped", trusted, "10.0.0.1:4000", []string{"::ffff:1.1.1.1"}, "1.1.1.1"},
		{"single trusted host", trusted, "192.0.2.7:1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"neighbour of single host untrusted", trusted, "192.0.2.8:1", []string{"198.51.100.1"}, "192.0.2.8"},
		{"remote without port", trusted, "203.0.113.9", nil, "203.0.113.9"},
		{"unix socket peer", trusted, "@", []string{"1.1.1.1"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got := tc.trusted.ClientIP(r)
			if tc.want == "" {
				if got.IsValid() {
					t.Fatalf("ClientIP = %v, want invalid", got)
				}
				return
			}
			if got != netip.MustParseAddr(tc.want) {
				t.Fatalf("ClientIP = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTrustedProxiesContains(t *testing.T) {
	t.Parallel()
	tp := NewTrustedProxies([]netip.Prefix{
		netip.MustParsePrefix("10.1.2.3/8"), // unmasked on input
		netip.MustParsePrefix("::ffff:172.16.0.0/108"),
		{}, // invalid: ignored
	})
	tests := []struct {
		addr string
		want bool
	}{
		{"10.200.0.1", true},
		{"11.0.0.1", false},
		{"172.16.5.5", true},
		{"::ffff:10.0.0.1", true},
		{"2001:db8::1", false},
	}
	for _, tc := range tests {
		if got := tp.Contains(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Contains(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if (*TrustedProxies)(nil).Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Error("nil TrustedProxies trusts an address")
	}
	if tp.Contains(netip.Addr{}) {
		t.Error("invalid address trusted")
	}
}
