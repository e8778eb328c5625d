package cache

import (
	"net/http"
	"testing"
)

// RFC 9111 §5.2: directive parsing.
func TestParseDirectives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    []string
		flags ccFlag
		check func(d directives) bool
	}{
		{"empty", nil, 0, nil},
		{"max-age", []string{"max-age=60"}, ccMaxAge, func(d directives) bool { return d.maxAge == 60 }},
		{"case-insensitive names", []string{"MAX-AGE=60, Public"}, ccMaxAge | ccPublic, func(d directives) bool { return d.maxAge == 60 }},
		{"quoted argument", []string{`max-age="60"`}, ccMaxAge, func(d directives) bool { return d.maxAge == 60 }},
		{"duplicate: first wins", []string{"max-age=60, max-age=0"}, ccMaxAge, func(d directives) bool { return d.maxAge == 60 }},
		{"duplicate across lines", []string{"max-age=5", "max-age=99"}, ccMaxAge, func(d directives) bool { return d.maxAge == 5 }},
		{"invalid max-age is stale", []string{"max-age=abc"}, ccMaxAge | ccInvalidFreshness, func(d directives) bool { return d.maxAge == 0 }},
		{"negative max-age is stale", []string{"max-age=-1"}, ccMaxAge | ccInvalidFreshness, nil},
		{"max-age without value is stale", []string{"max-age"}, ccMaxAge | ccInvalidFreshness, nil},
		{"overflow clamps to 2^31", []string{"max-age=99999999999999999999"}, ccMaxAge, func(d directives) bool { return d.maxAge == 1<<31 }},
		{"s-maxage", []string{"s-maxage=30, max-age=0"}, ccSMaxAge | ccMaxAge, func(d directives) bool { return d.sMaxAge == 30 && d.maxAge == 0 }},
		{"qualified no-cache with comma in quotes", []string{`no-cache="Set-Cookie, X-Foo", max-age=10`}, ccNoCache | ccMaxAge, func(d directives) bool { return d.maxAge == 10 }},
		{"qualified private", []string{`private="X-Secret"`}, ccPrivate, nil},
		{"escaped quote in string", []string{`foo="a\"b,c", no-store`}, ccNoStore, nil},
		{"whitespace everywhere", []string{"  no-cache ,\tmust-revalidate , proxy-revalidate  "}, ccNoCache | ccMustRevalidate | ccProxyRevalidate, nil},
		{"unknown ignored", []string{"community=UCI, immutable, public"}, ccPublic, nil},
		{"max-stale without value", []string{"max-stale"}, ccMaxStale | ccMaxStaleAny, nil},
		{"max-stale with value", []string{"max-stale=30"}, ccMaxStale, func(d directives) bool { return d.maxStale == 30 }},
		{"max-stale invalid is ignored", []string{"max-stale=x"}, 0, nil},
		{"min-fresh", []string{"min-fresh=5"}, ccMinFresh, func(d directives) bool { return d.minFresh == 5 }},
		{"only-if-cached", []string{"only-if-cached"}, ccOnlyIfCached, nil},
		{"swr and sie", []string{"max-age=1, stale-while-revalidate=30, stale-if-error=600"}, ccMaxAge | ccStaleWhileRevalidate | ccStaleIfError,
			func(d directives) bool { return d.staleWhileRevalidate == 30 && d.staleIfError == 600 }},
		{"must-understand", []string{"must-understand, no-store"}, ccMustUnderstand | ccNoStore, nil},
		{"empty elements", []string{",,, public ,,"}, ccPublic, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := parseDirectives(tc.in)
			if d.flags != tc.flags {
				t.Fatalf("flags = %b, want %b", d.flags, tc.flags)
			}
			if tc.check != nil && !tc.check(d) {
				t.Fatalf("values wrong: %+v", d)
			}
		})
	}
}

// RFC 9111 §5.4: Pragma: no-cache only counts without Cache-Control.
func TestParseRequestPragma(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		hdr     http.Header
		noCache bool
	}{
		{"pragma alone", http.Header{"Pragma": {"no-cache"}}, true},
		{"pragma in a list", http.Header{"Pragma": {"foo, No-Cache"}}, true},
		{"cache-control wins", http.Header{"Pragma": {"no-cache"}, "Cache-Control": {"max-age=10"}}, false},
		{"cache-control no-cache", http.Header{"Cache-Control": {"no-cache"}}, true},
		{"neither", http.Header{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: tc.hdr}
			if got := parseRequest(r).noCache; got != tc.noCache {
				t.Fatalf("noCache = %v, want %v", got, tc.noCache)
			}
		})
	}
}

func TestParseDirectivesDoesNotAllocate(t *testing.T) {
	in := []string{`max-age=60, no-cache="a, b", s-maxage="5", stale-while-revalidate=10`}
	if n := testing.AllocsPerRun(100, func() { _ = parseDirectives(in) }); n != 0 {
		t.Fatalf("parseDirectives allocates %v times", n)
	}
}
