package router

import "testing"

func hostTable(t *testing.T) *Table {
	return mustNew(t,
		siteOf([]string{"example.com", "www.example.com"}, say("/", "exact")),
		siteOf([]string{"*.example.com"}, say("/", "wild")),
		siteOf([]string{"special.example.com"}, say("/", "special")),
		siteOf([]string{"*.sub.example.com"}, say("/", "subwild")),
		siteOf([]string{"::1", "127.0.0.1"}, say("/", "loopback")),
		siteOf([]string{"*"}, say("/", "any")),
	)
}

func TestHostPrecedence(t *testing.T) {
	t.Parallel()
	tbl := hostTable(t)
	tests := []struct {
		name, host, want string
	}{
		{"exact", "example.com", "exact"},
		{"exact second host", "www.example.com", "exact"},
		{"exact beats wildcard", "special.example.com", "special"},
		{"wildcard one label", "a.example.com", "wild"},
		{"wildcard not two labels", "a.b.example.com", "any"},
		{"deeper wildcard", "a.sub.example.com", "subwild"},
		{"wildcard not apex", "sub.example.com", "wild"},
		{"wildcard empty label", ".example.com", "any"},
		{"unknown falls back", "other.org", "any"},
		{"empty host falls back", "", "any"},
		{"upper case exact", "EXAMPLE.Com", "exact"},
		{"upper case wildcard", "Foo.EXAMPLE.com", "wild"},
		{"upper case exact wins", "SPECIAL.example.COM", "special"},
		{"port", "example.com:8443", "exact"},
		{"port upper case", "WWW.Example.com:443", "exact"},
		{"port wildcard", "a.example.com:80", "wild"},
		{"trailing dot", "example.com.", "exact"},
		{"trailing dot and port", "Example.com.:443", "exact"},
		{"trailing dot wildcard", "a.example.com.", "wild"},
		{"ipv6 with port", "[::1]:8080", "loopback"},
		{"ipv6 bracketed", "[::1]", "loopback"},
		{"ipv6 bare", "::1", "loopback"},
		{"ipv4 with port", "127.0.0.1:8080", "loopback"},
		{"suffix is not a label", "xexample.com", "any"},
		{"very long upper case", "A" + string(make([]byte, 300)), "any"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tag(tbl.Match(tt.host, "/")); got != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.host, got, tt.want)
			}
		})
	}
}

func TestHostNoFallback(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t,
		siteOf([]string{"Example.COM"}, say("/", "exact")), // config hosts are normalised too
		siteOf([]string{"*.example.com"}, say("/", "wild")),
	)
	tests := []struct {
		name, host, want string
	}{
		{"exact", "example.com", "exact"},
		{"wildcard", "x.example.com", "wild"},
		{"unknown", "example.org", "<nil>"},
		{"empty", "", "<nil>"},
		{"apex of wildcard only", "a.b.example.com", "<nil>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tag(tbl.Match(tt.host, "/")); got != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.host, got, tt.want)
			}
		})
	}
	if s := tbl.Site("EXAMPLE.com:443"); s == nil || s.Hosts[0] != "Example.COM" {
		t.Errorf("Site = %v, want the exact site", s)
	}
	if s := tbl.Site("nope.org"); s != nil {
		t.Errorf("Site(nope.org) = %v, want nil", s)
	}
}

func TestTrimHost(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"example.com", "example.com"},
		{"example.com:80", "example.com"},
		{"example.com.", "example.com"},
		{"example.com.:80", "example.com"},
		{"[::1]:443", "::1"},
		{"[::1]", "::1"},
		{"[::1", "[::1"},
		{"fe80::1", "fe80::1"},
		{".", "."},
		{"*", "*"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			if got := trimHost(tt.in); got != tt.want {
				t.Errorf("trimHost(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
