package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// benchTable has a few sites and, on example.com, 50 routes of varying depth.
func benchTable(tb testing.TB) *Table {
	routes := []*config.Route{say("/", "root")}
	for i := range 49 {
		switch i % 3 {
		case 0:
			routes = append(routes, say(fmt.Sprintf("/s%d/", i), "r"))
		case 1:
			routes = append(routes, say(fmt.Sprintf("/s%d/deep/er", i), "r"))
		default:
			routes = append(routes, say(fmt.Sprintf("/s%d/deep/er/still/", i), "r"))
		}
	}
	sites := []*config.Site{
		siteOf([]string{"example.com", "www.example.com"}, routes...),
		siteOf([]string{"*.example.com"}, say("/", "wild")),
		siteOf([]string{"*"}, say("/", "any")),
	}
	for i := range 20 {
		sites = append(sites, siteOf([]string{fmt.Sprintf("host%d.test", i)}, say("/", "h")))
	}
	return mustNew(tb, sites...)
}

var matchCases = []struct{ name, host, path string }{
	{"exact", "example.com", "/s0/x"},
	{"exact-port", "example.com:443", "/s0/x"},
	{"wildcard", "app.example.com", "/x"},
	{"mixed-case", "WWW.Example.COM", "/s3/x"},
	{"fallback", "unknown.org", "/"},
	{"deep-path", "example.com", "/s47/deep/er/still/and/more"},
	{"no-route-root", "example.com", "/zzz/none"},
}

// TestMatchAllocs asserts the documented property that Match does not
// allocate, for every kind of host and path.
func TestMatchAllocs(t *testing.T) {
	tbl := benchTable(t)
	for _, c := range matchCases {
		if tbl.Match(c.host, c.path) == nil {
			t.Fatalf("%s: no match", c.name)
		}
		if n := testing.AllocsPerRun(100, func() { tbl.Match(c.host, c.path) }); n != 0 {
			t.Errorf("%s: Match allocates %v times", c.name, n)
		}
	}
}

// TestLookupAllocs asserts that Lookup does not allocate for a clean path,
// with and without an SNI check.
func TestLookupAllocs(t *testing.T) {
	tbl := benchTable(t)
	r := httptest.NewRequest(http.MethodGet, "/s47/deep/er/still/x?q=1", nil)
	r.Host = "Example.com:443"
	if rt, status := tbl.Lookup(r); rt == nil {
		t.Fatalf("Lookup status %d", status)
	}
	if n := testing.AllocsPerRun(100, func() { tbl.Lookup(r) }); n != 0 {
		t.Errorf("Lookup allocates %v times", n)
	}
}

func BenchmarkMatch(b *testing.B) {
	tbl := benchTable(b)
	for _, c := range matchCases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if tbl.Match(c.host, c.path) == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}

func BenchmarkLookup(b *testing.B) {
	tbl := benchTable(b)
	cases := []struct{ name, target, host string }{
		{"clean", "/s47/deep/er/still/x?q=1", "example.com"},
		{"mixed-case-port", "/s3/x", "Example.COM:8443"},
		{"unclean", "/s47//deep/./er/x/../still/x", "example.com"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, c.target, nil)
			r.Host = c.host
			b.ReportAllocs()
			for b.Loop() {
				if rt, _ := tbl.Lookup(r); rt == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}
