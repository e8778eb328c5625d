package integration

// The shared response cache (site cache: true) through the binary: what is
// stored and served, Vary, invalidation by unsafe methods, purges through
// the admin API, stale-if-error, and sites that do not cache.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cacheOrigin is an origin whose answer depends on the path and which
// counts the requests it got per method and path.
type cacheOrigin struct {
	mu   sync.Mutex
	hits map[string]int // "GET /path" → count
	fail atomic.Bool    // answer 500 to /sie/ and /nosie/ paths
	errs atomic.Int64   // 500s sent

	notModified atomic.Int64 // 304s sent to /etag/ revalidations
}

func (o *cacheOrigin) count(method, path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.hits[method+" "+path]
}

func (o *cacheOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.hits[r.Method+" "+r.URL.Path]++
	n := o.hits[r.Method+" "+r.URL.Path]
	o.mu.Unlock()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		fmt.Fprintf(w, "%s done\n", r.Method)
		return
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/private/"):
		h.Set("Cache-Control", "private, max-age=60")
	case strings.HasPrefix(p, "/nostore/"):
		h.Set("Cache-Control", "no-store")
	case strings.HasPrefix(p, "/cookie/"):
		h.Set("Cache-Control", "max-age=60")
		h.Set("Set-Cookie", "session=abc")
	case strings.HasPrefix(p, "/vary/"):
		h.Set("Cache-Control", "max-age=60")
		h.Set("Vary", "Accept-Encoding")
		fmt.Fprintf(w, "variant %q #%d\n", r.Header.Get("Accept-Encoding"), n)
		return
	case strings.HasPrefix(p, "/etag/"):
		h.Set("Cache-Control", "max-age=1")
		h.Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			o.notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
	case strings.HasPrefix(p, "/sie/"), strings.HasPrefix(p, "/nosie/"):
		if o.fail.Load() {
			o.errs.Add(1)
			http.Error(w, "origin broke", http.StatusInternalServerError)
			return
		}
		if strings.HasPrefix(p, "/sie/") {
			h.Set("Cache-Control", "max-age=1, stale-if-error=60")
		} else {
			h.Set("Cache-Control", "max-age=1")
		}
	default:
		h.Set("Cache-Control", "max-age=60")
	}
	fmt.Fprintf(w, "%s #%d\n", p, n)
}

// cacheStatusOf is the response's Cache-Status member from gatehouse.
func cacheStatusOf(r Response) string {
	for _, v := range r.Header.Values("Cache-Status") {
		for m := range strings.SplitSeq(v, ",") {
			if m = strings.TrimSpace(m); strings.HasPrefix(m, "gatehouse") {
				return m
			}
		}
	}
	return ""
}

func isHit(r Response) bool {
	for p := range strings.SplitSeq(cacheStatusOf(r), ";") {
		if strings.TrimSpace(p) == "hit" {
			return true
		}
	}
	return false
}

// TestCache drives one gateway with a caching site (plain HTTP) and a
// non-caching one in front of the same origin.
func TestCache(t *testing.T) {
	t.Parallel()
	origin := &cacheOrigin{hits: map[string]int{}}
	be := newBackend(t, origin.ServeHTTP)
	ag := startAdminGateway(t, "", fmt.Sprintf(`
upstreams:
  origin:
    backends:
      - url: %s
sites:
  - hosts: [cache.test]
    tls: off
    cache: true
    routes:
      - path: /
        upstream: origin
  - hosts: [nocache.test]
    tls: off
    routes:
      - path: /
        upstream: origin
`, be.URL))
	get := func(t *testing.T, path string, hdr http.Header) Response {
		t.Helper()
		return ag.Do(t, "cache.test", http.MethodGet, path, hdr, nil)
	}
	purge := func(t *testing.T, query string) Response {
		t.Helper()
		return ag.Admin(t, http.MethodPost, "/cache/purge?"+query)
	}
	purged := func(t *testing.T, r Response) int {
		t.Helper()
		var v struct {
			Purged *int `json:"purged"`
		}
		if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &v) != nil || v.Purged == nil {
			t.Fatalf("purge = %d %q, want 200 {\"purged\": N}", r.Status, r.Body)
		}
		return *v.Purged
	}

	t.Run("max-age is served from cache", func(t *testing.T) {
		t.Parallel()
		const p = "/fresh/a?x=1"
		r1 := get(t, p, nil)
		if r1.Status != 200 || r1.Body != "/fresh/a #1\n" {
			t.Fatalf("first GET = %d %q", r1.Status, r1.Body)
		}
		if cs := cacheStatusOf(r1); isHit(r1) || !strings.Contains(cs, "fwd=uri-miss") || !strings.Contains(cs, "stored") {
			t.Errorf("first GET Cache-Status = %q, want a stored uri-miss", cs)
		}
		for i := range 3 {
			r := get(t, p, nil)
			if r.Status != 200 || r.Body != r1.Body {
				t.Errorf("GET %d = %d %q, want the cached %q", i+2, r.Status, r.Body, r1.Body)
			}
			if !isHit(r) {
				t.Errorf("GET %d Cache-Status = %q, want hit", i+2, cacheStatusOf(r))
			}
			if age, err := strconv.Atoi(r.Header.Get("Age")); err != nil || age < 0 || age > 60 {
				t.Errorf("GET %d Age = %q, want whole seconds", i+2, r.Header.Get("Age"))
			}
		}
		if n := origin.count("GET", "/fresh/a"); n != 1 {
			t.Errorf("origin got %d GETs for %s, want 1", n, p)
		}
		// Another query string is another URL.
		if r := get(t, "/fresh/a?x=2", nil); r.Body != "/fresh/a #2\n" || isHit(r) {
			t.Errorf("GET /fresh/a?x=2 = %q (Cache-Status %q), want a miss answered by the origin", r.Body, cacheStatusOf(r))
		}
	})

	t.Run("private, no-store and Set-Cookie are not stored", func(t *testing.T) {
		t.Parallel()
		for _, p := range []string{"/private/a", "/nostore/a", "/cookie/a"} {
			for i := range 3 {
				r := get(t, p, nil)
				if want := fmt.Sprintf("%s #%d\n", p, i+1); r.Status != 200 || r.Body != want {
					t.Errorf("GET %s #%d = %d %q, want %q from the origin", p, i+1, r.Status, r.Body, want)
				}
				if cs := cacheStatusOf(r); isHit(r) || strings.Contains(cs, "stored") {
					t.Errorf("GET %s Cache-Status = %q, want neither hit nor stored", p, cs)
				}
			}
			if n := origin.count("GET", p); n != 3 {
				t.Errorf("origin got %d GETs for %s, want 3 (never cached)", n, p)
			}
		}
	})

	t.Run("Vary Accept-Encoding keeps two variants", func(t *testing.T) {
		t.Parallel()
		const p = "/vary/a"
		gz := http.Header{"Accept-Encoding": {"gzip"}}
		br := http.Header{"Accept-Encoding": {"br"}}
		rg := get(t, p, gz)
		rb := get(t, p, br)
		if rg.Body != "variant \"gzip\" #1\n" || rb.Body != "variant \"br\" #2\n" {
			t.Fatalf("first gzip/br GETs = %q, %q", rg.Body, rb.Body)
		}
		if cs := cacheStatusOf(rb); !strings.Contains(cs, "fwd=vary-miss") {
			t.Errorf("first br GET Cache-Status = %q, want fwd=vary-miss", cs)
		}
		for range 2 {
			if r := get(t, p, gz); r.Body != rg.Body || !isHit(r) {
				t.Errorf("gzip GET = %q (Cache-Status %q), want the cached gzip variant %q", r.Body, cacheStatusOf(r), rg.Body)
			}
			if r := get(t, p, br); r.Body != rb.Body || !isHit(r) {
				t.Errorf("br GET = %q (Cache-Status %q), want the cached br variant %q", r.Body, cacheStatusOf(r), rb.Body)
			}
		}
		if n := origin.count("GET", p); n != 2 {
			t.Errorf("origin got %d GETs for %s, want 2 (one per variant)", n, p)
		}
		// Variants are matched on normalised list values.
		const p2 = "/vary/b"
		r1 := get(t, p2, http.Header{"Accept-Encoding": {"gzip, deflate"}})
		r2 := get(t, p2, http.Header{"Accept-Encoding": {"gzip,deflate"}})
		if r2.Body != r1.Body || !isHit(r2) {
			t.Errorf("Accept-Encoding \"gzip,deflate\" after \"gzip, deflate\" = %q (Cache-Status %q), want the stored %q",
				r2.Body, cacheStatusOf(r2), r1.Body)
		}
	})

	t.Run("POST invalidates", func(t *testing.T) {
		t.Parallel()
		const p = "/inval/a"
		get(t, p, nil)
		if r := get(t, p, nil); !isHit(r) {
			t.Fatalf("second GET Cache-Status = %q, want hit", cacheStatusOf(r))
		}
		r := ag.Do(t, "cache.test", http.MethodPost, p, nil, strings.NewReader("change=1"))
		if r.Status != 200 || r.Body != "POST done\n" {
			t.Fatalf("POST = %d %q, want the origin's 200", r.Status, r.Body)
		}
		if cs := cacheStatusOf(r); !strings.Contains(cs, "fwd=method") {
			t.Errorf("POST Cache-Status = %q, want fwd=method", cs)
		}
		if origin.count("POST", p) != 1 {
			t.Errorf("origin got %d POSTs, want 1", origin.count("POST", p))
		}
		r = get(t, p, nil)
		if isHit(r) || r.Body != p+" #2\n" {
			t.Errorf("GET after POST = %q (Cache-Status %q), want a fresh fetch %q", r.Body, cacheStatusOf(r), p+" #2\n")
		}
		if n := origin.count("GET", p); n != 2 {
			t.Errorf("origin got %d GETs, want 2", n)
		}
	})

	t.Run("admin purge by url and prefix", func(t *testing.T) {
		t.Parallel()
		for _, p := range []string{"/purge/one", "/purge/two", "/pp/a", "/pp/b", "/ppx"} {
			get(t, p, nil)
			if r := get(t, p, nil); !isHit(r) {
				t.Fatalf("GET %s twice: second Cache-Status = %q, want hit", p, cacheStatusOf(r))
			}
		}
		if n := purged(t, purge(t, "url="+url.QueryEscape("http://cache.test/purge/one"))); n != 1 {
			t.Errorf("purge url=http://cache.test/purge/one purged %d, want 1", n)
		}
		if r := get(t, "/purge/one", nil); isHit(r) || r.Body != "/purge/one #2\n" {
			t.Errorf("GET /purge/one after purge = %q (Cache-Status %q), want a fetch from the origin", r.Body, cacheStatusOf(r))
		}
		if r := get(t, "/purge/two", nil); !isHit(r) {
			t.Errorf("GET /purge/two (not purged) Cache-Status = %q, want hit", cacheStatusOf(r))
		}
		// Nothing stored under that URL: purged 0, still 200.
		if n := purged(t, purge(t, "url="+url.QueryEscape("http://cache.test/never/stored"))); n != 0 {
			t.Errorf("purge of an uncached URL purged %d, want 0", n)
		}

		if n := purged(t, purge(t, "prefix="+url.QueryEscape("http://cache.test/pp/"))); n != 2 {
			t.Errorf("purge prefix=http://cache.test/pp/ purged %d, want 2", n)
		}
		for _, p := range []string{"/pp/a", "/pp/b"} {
			if r := get(t, p, nil); isHit(r) || r.Body != p+" #2\n" {
				t.Errorf("GET %s after prefix purge = %q (Cache-Status %q), want a fetch from the origin", p, r.Body, cacheStatusOf(r))
			}
		}
		if r := get(t, "/ppx", nil); !isHit(r) {
			t.Errorf("GET /ppx (outside the purged prefix) Cache-Status = %q, want hit", cacheStatusOf(r))
		}
	})

	t.Run("bad purge requests are 400", func(t *testing.T) {
		t.Parallel()
		for _, q := range []string{
			"",
			"url=" + url.QueryEscape("/relative/path"),
			"url=" + url.QueryEscape("ftp://cache.test/x"),
			"url=" + url.QueryEscape("http://cache.test/a") + "&prefix=" + url.QueryEscape("http://cache.test/"),
			"prefix=" + url.QueryEscape("cache.test/"),
		} {
			r := purge(t, q)
			var v struct {
				Error string `json:"error"`
			}
			if r.Status != http.StatusBadRequest || json.Unmarshal([]byte(r.Body), &v) != nil || v.Error == "" {
				t.Errorf("POST /cache/purge?%s = %d %q, want 400 with a JSON error", q, r.Status, r.Body)
			}
		}
		if r := ag.Admin(t, http.MethodGet, "/cache/purge?url="+url.QueryEscape("http://cache.test/a")); r.Status != http.StatusMethodNotAllowed {
			t.Errorf("GET /cache/purge = %d, want 405", r.Status)
		}
	})

	t.Run("stale-if-error serves the stored response", func(t *testing.T) {
		t.Parallel()
		// Both paths share origin.fail, so they run in one subtest.
		const sie, nosie = "/sie/a", "/nosie/a"
		first := get(t, sie, nil)
		plain := get(t, nosie, nil)
		if first.Status != 200 || first.Body != sie+" #1\n" || plain.Status != 200 {
			t.Fatalf("first GETs = %d %q, %d %q", first.Status, first.Body, plain.Status, plain.Body)
		}
		origin.fail.Store(true)
		defer origin.fail.Store(false)

		// max-age=1: within ~2s the entry is stale, the cache asks the
		// origin, gets 500 and serves the stored response instead.
		var r Response
		pollUntil(t, 6*time.Second, "a stale response served on the origin's 500", func() (bool, string) {
			before := origin.errs.Load()
			r = get(t, sie, nil)
			if r.Status != 200 || r.Body != first.Body {
				t.Fatalf("GET %s = %d %q while the origin fails, want the stored 200 %q", sie, r.Status, r.Body, first.Body)
			}
			return origin.errs.Load() > before, "Cache-Status " + cacheStatusOf(r)
		})
		cs := cacheStatusOf(r)
		if !strings.Contains(cs, "stale-if-error") || !strings.Contains(cs, "fwd-status=500") {
			t.Errorf("stale response Cache-Status = %q, want detail=stale-if-error and fwd-status=500", cs)
		}
		if age, err := strconv.Atoi(r.Header.Get("Age")); err != nil || age < 1 {
			t.Errorf("stale response Age = %q, want at least 1", r.Header.Get("Age"))
		}

		// Without stale-if-error the origin's 500 reaches the client.
		pollUntil(t, 6*time.Second, "the origin's 500 passed through for "+nosie, func() (bool, string) {
			r := get(t, nosie, nil)
			if r.Status == 200 && r.Body != plain.Body {
				t.Fatalf("GET %s = 200 %q, want the stored %q or a 500", nosie, r.Body, plain.Body)
			}
			return r.Status == http.StatusInternalServerError, fmt.Sprintf("%d %q", r.Status, r.Body)
		})
	})

	t.Run("HEAD, client conditionals and only-if-cached", func(t *testing.T) {
		t.Parallel()
		const p = "/cond/a"
		if r := ag.Do(t, "cache.test", http.MethodGet, p, http.Header{"Cache-Control": {"only-if-cached"}}, nil); r.Status != http.StatusGatewayTimeout {
			t.Errorf("only-if-cached GET of an uncached URL = %d %q, want 504", r.Status, r.Body)
		}
		first := get(t, p, nil)
		r := ag.Do(t, "cache.test", http.MethodHead, p, nil, nil)
		if r.Status != 200 || r.Body != "" || !isHit(r) {
			t.Errorf("HEAD of a stored GET = %d %q (Cache-Status %q), want an empty 200 hit", r.Status, r.Body, cacheStatusOf(r))
		}
		if cl := r.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(first.Body)) {
			t.Errorf("HEAD Content-Length = %s, want %d", cl, len(first.Body))
		}
		r = ag.Do(t, "cache.test", http.MethodGet, p, http.Header{"Cache-Control": {"only-if-cached"}}, nil)
		if r.Status != 200 || r.Body != first.Body || !isHit(r) {
			t.Errorf("only-if-cached GET of a stored URL = %d %q, want the stored 200", r.Status, r.Body)
		}
		if origin.count("GET", p) != 1 || origin.count("HEAD", p) != 0 {
			t.Errorf("origin got %d GETs and %d HEADs, want 1 and 0", origin.count("GET", p), origin.count("HEAD", p))
		}
	})

	t.Run("stale entries are revalidated with their ETag", func(t *testing.T) {
		t.Parallel()
		const p = "/etag/a"
		first := get(t, p, nil)
		if first.Status != 200 || first.Header.Get("ETag") != `"v1"` {
			t.Fatalf("first GET = %d %q ETag %q", first.Status, first.Body, first.Header.Get("ETag"))
		}
		// The client's own validator is answered by the cache.
		r := ag.Do(t, "cache.test", http.MethodGet, p, http.Header{"If-None-Match": {`"v1"`}}, nil)
		if r.Status != http.StatusNotModified || r.Body != "" {
			t.Errorf("GET with If-None-Match of the stored ETag = %d %q, want an empty 304", r.Status, r.Body)
		}
		// max-age=1: once stale, the cache sends a conditional request; the
		// origin's 304 refreshes the entry and the stored body is served.
		pollUntil(t, 6*time.Second, "a revalidation answered 304 by the origin", func() (bool, string) {
			before := origin.notModified.Load()
			r = get(t, p, nil)
			if r.Status != 200 || r.Body != first.Body {
				t.Fatalf("GET %s = %d %q, want the stored 200 %q", p, r.Status, r.Body, first.Body)
			}
			return origin.notModified.Load() > before, "Cache-Status " + cacheStatusOf(r)
		})
		if cs := cacheStatusOf(r); !strings.Contains(cs, "fwd=stale") || !strings.Contains(cs, "fwd-status=304") {
			t.Errorf("revalidated response Cache-Status = %q, want fwd=stale and fwd-status=304", cs)
		}
		if n := origin.count("GET", p); n < 2 {
			t.Errorf("origin got %d GETs, want the first plus at least one revalidation", n)
		}
	})

	t.Run("a site without cache never caches", func(t *testing.T) {
		t.Parallel()
		const p = "/fresh/nc"
		for i := range 3 {
			r := ag.Get(t, "nocache.test", p)
			if want := fmt.Sprintf("%s #%d\n", p, i+1); r.Status != 200 || r.Body != want {
				t.Errorf("GET nocache.test%s #%d = %d %q, want %q", p, i+1, r.Status, r.Body, want)
			}
			if cs := r.Header.Values("Cache-Status"); len(cs) != 0 {
				t.Errorf("non-caching site sent Cache-Status %q", cs)
			}
			if r.Header.Get("Age") != "" {
				t.Errorf("non-caching site sent Age %q", r.Header.Get("Age"))
			}
		}
		if n := origin.count("GET", p); n != 3 {
			t.Errorf("origin got %d GETs, want 3", n)
		}
	})

	t.Run("admin cache stats", func(t *testing.T) {
		t.Parallel()
		get(t, "/stats/a", nil)
		get(t, "/stats/a", nil)
		r := ag.Admin(t, http.MethodGet, "/cache")
		var v struct {
			Enabled bool `json:"enabled"`
			Stats   struct {
				Hits, Misses, Stored uint64
				Entries              int64
			} `json:"stats"`
		}
		if r.Status != 200 || json.Unmarshal([]byte(r.Body), &v) != nil || !v.Enabled {
			t.Fatalf("GET /cache = %d %q, want 200 with enabled true", r.Status, r.Body)
		}
		if v.Stats.Hits < 1 || v.Stats.Misses < 1 || v.Stats.Stored < 1 || v.Stats.Entries < 1 {
			t.Errorf("GET /cache stats = %+v, want at least one hit, miss, stored response and entry:\n%s", v.Stats, r.Body)
		}
	})
}
