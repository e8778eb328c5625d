package cache

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Keys of requests and of purge URLs are built by the same canonicalisation.
func TestCanonicalKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string // a purge URL, and (unless noReq) the target of a request
		want string
		// host, when set, is the request's Host instead of the URL's.
		host  string
		noReq bool // not a valid request target
	}{
		{url: "http://example.com/a", want: "http://example.com/a"},
		{url: "HTTP://Example.COM/A", want: "http://example.com/A", noReq: true},
		{url: "http://example.com/A", host: "EXAMPLE.com", want: "http://example.com/A"},
		{url: "http://example.com", want: "http://example.com/"},
		{url: "http://example.com:80/a", want: "http://example.com/a"},
		{url: "http://example.com:/a", want: "http://example.com/a"},
		{url: "https://example.com:443/a", want: "https://example.com/a"},
		{url: "http://example.com:443/a", want: "http://example.com:443/a"},
		{url: "https://example.com:80/a", want: "https://example.com:80/a"},
		{url: "http://example.com:8080/a", want: "http://example.com:8080/a"},
		{url: "http://example.com./a", want: "http://example.com/a"},
		{url: "http://example.com.:80/a", want: "http://example.com/a"},
		{url: "http://example.com.:8080/a", want: "http://example.com:8080/a"},
		{url: "http://[::1]:80/a", want: "http://[::1]/a"},
		{url: "http://[::1]:8080/a", want: "http://[::1]:8080/a"},
		{url: "http://[::1]/a", want: "http://[::1]/a"},
		{url: "http://example.com/caf%c3%a9", want: "http://example.com/caf%C3%A9"},
		{url: "http://example.com/caf%C3%A9", want: "http://example.com/caf%C3%A9"},
		{url: "http://example.com/café", want: "http://example.com/caf%C3%A9", noReq: true},
		{url: "http://example.com/%7euser/%41%2f%2F%3a", want: "http://example.com/~user/A%2F%2F%3A"},
		{url: "http://example.com/a%2d%2E%5f%7E%30", want: "http://example.com/a-._~0"},
		{url: "http://example.com/a?q=caf%c3%a9&x=%7E&y=%2b+", want: "http://example.com/a?q=caf%C3%A9&x=~&y=%2B+"},
		{url: "http://example.com/a?y=café", want: "http://example.com/a?y=caf%C3%A9", noReq: true},
		{url: "http://example.com/a?bad=%zz%4", want: "http://example.com/a?bad=%zz%4"},
		{url: "http://example.com/a?", want: "http://example.com/a?"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			got, ok := keyFromURL(tc.url)
			if !ok || got != tc.want {
				t.Fatalf("keyFromURL = %q, %v; want %q", got, ok, tc.want)
			}
			if tc.noReq {
				return
			}
			r := httptest.NewRequest(http.MethodGet, tc.url, nil)
			if tc.host != "" {
				r.Host = tc.host
			}
			if got := cacheKey(r); got != tc.want {
				t.Fatalf("cacheKey = %q, want %q", got, tc.want)
			}
		})
	}
}

// A request with raw UTF-8 in its target (which Go's server accepts) gets
// the key of its percent-encoded form; a TLS request an https key.
func TestCacheKeyOfRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target, host string
		tls          bool
		want         string
	}{
		{target: "/café?q=é", host: "example.com", want: "http://example.com/caf%C3%A9?q=%C3%A9"},
		{target: "/a", host: "Example.com:443", tls: true, want: "https://example.com/a"},
		{target: "/a", host: "example.com:443", want: "http://example.com:443/a"},
		{target: "http://example.com:80/abs", host: "example.com:80", want: "http://example.com/abs"},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RequestURI = tc.target
		u, err := r.URL.Parse(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		r.URL, r.Host = u, tc.host
		if tc.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if got := cacheKey(r); got != tc.want {
			t.Errorf("cacheKey(%q, Host %q) = %q, want %q", tc.target, tc.host, got, tc.want)
		}
	}
}

func TestNormalisePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"/static/", "/static/"},
		{"HTTP://Example.COM/static/", "http://example.com/static/"},
		{"http://example.com:80/static/", "http://example.com/static/"},
		{"https://example.com.:443/", "https://example.com/"},
		{"http://example.com:8080/", "http://example.com:8080/"},
		{"http://example.com:80?q", "http://example.com?q"},
		{"http://Example.com", "http://example.com"},
		{"http://example.com/caf%c3%a9/", "http://example.com/caf%C3%A9/"},
		{"http://example.com/café", "http://example.com/caf%C3%A9"},
		{"http://example.com/caf%c3", "http://example.com/caf%C3"},
		{"http://example.com/caf%c", "http://example.com/caf%C"},
		{"http://example.com/%7e", "http://example.com/~"},
	}
	for _, tc := range tests {
		if got := normalisePrefix(tc.in); got != tc.want {
			t.Errorf("normalisePrefix(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Purges and invalidations reach what requests stored, however either
// spells the URL.
func TestPurgeCanonicalForms(t *testing.T) {
	t.Parallel()
	next := bodyHandler(10)
	tests := []struct {
		name   string
		stored []string // request targets stored first
		purge  func(c *Cache) int
		want   int
	}{
		{"upper-case escapes", []string{"http://example.com/caf%c3%a9"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/caf%C3%A9") }, 1},
		{"raw UTF-8", []string{"http://example.com/caf%c3%a9"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/café") }, 1},
		{"stored upper, purged lower", []string{"http://example.com/caf%C3%A9"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/caf%c3%a9") }, 1},
		{"unreserved escapes", []string{"http://example.com/%7euser"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/~user") }, 1},
		{"default port on the request", []string{"http://example.com:80/p"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/p") }, 1},
		{"default port on the purge", []string{"http://example.com/p"},
			func(c *Cache) int { return c.PurgeURL("http://EXAMPLE.com.:80/p") }, 1},
		{"other port is another origin", []string{"http://example.com:8080/p"},
			func(c *Cache) int { return c.PurgeURL("http://example.com/p") }, 0},
		{"prefix with escapes", []string{"http://example.com/caf%c3%a9/1", "http://example.com:80/caf%C3%A9/2", "http://example.com/cafe"},
			func(c *Cache) int { return c.PurgePrefix("HTTP://example.com:80/caf%c3") }, 2},
		{"prefix with raw UTF-8", []string{"http://example.com/caf%c3%a9/1", "http://example.com/caf%C3%A9/2"},
			func(c *Cache) int { return c.PurgePrefix("http://example.com/café/") }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newTestCache(t, newFakeClock())
			for _, target := range tc.stored {
				direct(c, next, http.MethodGet, target)
			}
			if got := c.Stats().Stored; got != uint64(len(tc.stored)) {
				t.Fatalf("Stored = %d, want %d", got, len(tc.stored))
			}
			if got := tc.purge(c); got != tc.want {
				t.Fatalf("removed %d, want %d", got, tc.want)
			}
		})
	}
}

// An unsafe method invalidates Location and Content-Location in their
// canonical form.
func TestInvalidationCanonicalForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, stored, location string
		invalidated            bool
	}{
		{"escapes", "http://example.com/caf%c3%a9", "/caf%C3%A9", true},
		{"raw UTF-8", "http://example.com/caf%C3%A9", "http://example.com/café", true},
		{"default port", "http://example.com/p", "http://example.com:80/p", true},
		{"request with default port", "http://example.com:80/p", "http://Example.com/p", true},
		{"other port", "http://example.com/p", "http://example.com:8080/p", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newTestCache(t, newFakeClock())
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					w.Header().Set("Location", tc.location)
					w.WriteHeader(http.StatusCreated)
					return
				}
				w.Header().Set("Cache-Control", "max-age=60")
				_, _ = w.Write([]byte("x"))
			})
			direct(c, next, http.MethodGet, tc.stored)
			host := httptest.NewRequest(http.MethodGet, tc.stored, nil).Host
			post := httptest.NewRequest(http.MethodPost, "http://example.com/items", nil)
			post.Host = host
			c.Handler(next).ServeHTTP(httptest.NewRecorder(), post)
			key, _ := keyFromURL(tc.stored)
			if _, ok := c.store.get(key); ok == tc.invalidated {
				t.Fatalf("entry still stored: %v, want %v", ok, !tc.invalidated)
			}
		})
	}
}
