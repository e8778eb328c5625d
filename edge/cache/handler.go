package cache

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Handler returns the caching middleware around next (the router or origin).
//
// GET and HEAD requests are answered from the store when RFC 9111 allows, and
// otherwise forwarded to next through a writer that streams to the client and
// stores what may be stored. Requests with an Upgrade header, CONNECT, OPTIONS
// and TRACE reach next with the client's ResponseWriter untouched. Other
// (unsafe) methods reach next through a thin writer that records the status,
// so a successful one invalidates the stored responses of its target URI and
// of same-origin Location and Content-Location (RFC 9111 §4.4).
func (c *Cache) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, upgrade := r.Header["Upgrade"]; upgrade {
			next.ServeHTTP(w, r)
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			c.serveSafe(w, r, next)
		case http.MethodOptions, http.MethodTrace, http.MethodConnect:
			next.ServeHTTP(w, r)
		default:
			c.serveUnsafe(w, r, next)
		}
	})
}

func (c *Cache) serveSafe(w http.ResponseWriter, r *http.Request, next http.Handler) {
	ri := parseRequest(r)
	key := cacheKey(r)
	if ri.hasPrecondition {
		// If-Match / If-Unmodified-Since are left to the origin.
		c.misses.Add(1)
		fwdRI := ri
		c.forward(w, r, &fwdRI, next, &forwardOpts{key: key, fwd: "bypass"})
		return
	}
	now := c.now()
	fwd := "uri-miss"
	var e *entry
	if u, ok := c.store.get(key); ok {
		if e = u.selectVariant(r, now); e == nil {
			fwd = "vary-miss"
		}
	}
	if e != nil {
		v, ttl := judge(e, &ri, now)
		cs := cacheStatus{hit: true, ttl: ttl, hasTTL: true}
		switch v {
		case useFresh:
			c.hits.Add(1)
			c.serveEntry(w, r, e, now, cs)
			return
		case useStale:
			c.hits.Add(1)
			c.staleServed.Add(1)
			c.serveEntry(w, r, e, now, cs)
			return
		case useStaleRevalidate:
			c.hits.Add(1)
			c.staleServed.Add(1)
			c.revalidateInBackground(r, next, key, e)
			cs.detail = "stale-while-revalidate"
			c.serveEntry(w, r, e, now, cs)
			return
		case forwardRequest:
			fwd = "request"
		default:
			fwd = "stale"
		}
	}
	if ri.cc.has(ccOnlyIfCached) {
		// RFC 9111 §5.2.1.7: nothing usable is stored, so 504.
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		appendCacheStatus(h, cacheStatus{fwd: fwd, detail: "only-if-cached"}.String())
		w.WriteHeader(http.StatusGatewayTimeout)
		_, _ = io.WriteString(w, "504 Gateway Timeout: not cached\n")
		return
	}
	// A copy, so that only a forward (which keeps it) moves it to the heap.
	fwdRI := ri
	c.fetch(w, r, &fwdRI, next, key, fwd, e, now)
}

// fetch forwards a request the store cannot answer, collapsing it with a
// concurrent forward of the same key when it may share that one's response.
func (c *Cache) fetch(w http.ResponseWriter, r *http.Request, ri *requestInfo, next http.Handler, key, fwd string, stale *entry, now time.Time) {
	// HEAD, Range and no-store requests never produce a stored response,
	// so they neither revalidate an entry nor lead a collapsed forward.
	storable := r.Method == http.MethodGet && !ri.hasRange && !ri.cc.has(ccNoStore)
	fo := &forwardOpts{key: key, fwd: fwd, store: storable}
	if stale != nil && storable {
		fo.stale = stale
		fo.staleIfError = fwd == "stale" && staleIfErrorAllowed(stale, ri, now)
	}
	if !ri.noCache && !c.pass.has(key, now) {
		c.collapse(w, r, ri, key, fwd, fo)
		if fo.done {
			return
		}
		// Whatever happens to the forward, its waiters are released at the
		// latest when it ends.
		defer fo.flight.release(true)
	}
	c.misses.Add(1)
	c.forward(w, r, ri, next, fo)
}

// collapse makes a request wait for a concurrent forward of its key and
// serves it from what that one stored (fo.done), or makes it lead a forward
// (fo.flight) that later requests wait for. Requests that may not lead can
// still wait. When a leader gives up for a reason of its own (its client went
// away), its waiters collapse again behind one of them, for at most
// maxCollapseRounds flights and CollapseWait in all; otherwise a waiter that
// found nothing usable goes upstream itself (fo.collapsed = -1).
func (c *Cache) collapse(w http.ResponseWriter, r *http.Request, ri *requestInfo, key, fwd string, fo *forwardOpts) {
	var deadline time.Time
	for round := 0; round < maxCollapseRounds; round++ {
		f, leader := c.flights.join(key, fo.store)
		if leader {
			fo.flight = f
			return
		}
		if f == nil {
			return
		}
		if round == 0 {
			deadline = time.Now().Add(c.collapseWait)
		}
		fo.collapsed = -1
		if !c.waitFlight(r, key, f, deadline) {
			break
		}
		if c.serveCollapsed(w, r, ri, key, fwd) {
			fo.done = true
			return
		}
		if !f.retry {
			break
		}
	}
	// The client may be gone: nothing to answer.
	fo.done = r.Context().Err() != nil
}

// serveCollapsed answers a request that waited for another's forward from
// what that forward stored, if it is usable for this request.
func (c *Cache) serveCollapsed(w http.ResponseWriter, r *http.Request, ri *requestInfo, key, fwd string) bool {
	u, ok := c.store.get(key)
	if !ok {
		return false
	}
	now := c.now()
	e := u.selectVariant(r, now)
	if e == nil {
		return false
	}
	if v, ttl := judge(e, ri, now); v == useFresh {
		c.hits.Add(1)
		c.collapsed.Add(1)
		c.serveEntry(w, r, e, now, cacheStatus{fwd: fwd, collapsed: 1, ttl: ttl, hasTTL: true})
		return true
	}
	return false
}

// serveEntry writes a stored response: its header with Age and Cache-Status,
// then, as the request asks, a 304, a 206/416 for a single byte range, or the
// full response (headers only for HEAD).
func (c *Cache) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, now time.Time, cs cacheStatus) {
	h := w.Header()
	age := floorSeconds(e.currentAge(now))
	if age > maxDeltaSeconds {
		age = maxDeltaSeconds
	}
	setEntryHeader(h, e.header, strconv.FormatInt(age, 10), cs.String())
	if e.status == http.StatusOK {
		if notModified(r.Header, e.etag, e.lastModified) {
			stripForNotModified(h)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		if rv, ok := r.Header["Range"]; ok && r.Method == http.MethodGet && len(rv) == 1 && ifRangeHolds(r.Header, e) {
			if c.serveRange(w, rv[0], e) {
				return
			}
		}
	}
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.body)
	}
}

// setEntryHeader sets the stored fields plus Age and Cache-Status in h using
// one allocation for all values; the slices are clipped so an append by a
// later handler copies instead of writing into a neighbour.
func setEntryHeader(h, stored http.Header, age, status string) {
	nv := 2
	for _, vv := range stored {
		nv += len(vv)
	}
	all := make([]string, nv)
	for k, vv := range stored {
		n := copy(all, vv)
		h[k] = all[:n:n]
		all = all[n:]
	}
	all[0] = age
	h["Age"] = all[0:1:1]
	old := h["Cache-Status"]
	if len(old) == 0 {
		all[1] = status
		h["Cache-Status"] = all[1:2:2]
	} else {
		h["Cache-Status"] = append(old[:len(old):len(old)], status)
	}
}

// serveUnsafe forwards a request with an unsafe method and, when the
// response is not an error (2xx/3xx), invalidates what it may have changed.
// A response that began successfully and then aborted still invalidates.
func (c *Cache) serveUnsafe(w http.ResponseWriter, r *http.Request, next http.Handler) {
	sw := &statusWriter{ResponseWriter: w}
	returned := false
	defer func() {
		st := sw.status
		if st == 0 && returned {
			st = http.StatusOK
		}
		if st >= 200 && st < 400 {
			c.invalidateAfterUnsafe(r, w.Header())
		}
	}()
	next.ServeHTTP(sw, r)
	returned = true
}

// invalidateAfterUnsafe removes the target URI and the same-origin URIs in
// Location and Content-Location (RFC 9111 §4.4), all variants of each. Keys
// are canonicalised, so "http://example.com:80/a" is the origin of
// "http://example.com/".
func (c *Cache) invalidateAfterUnsafe(r *http.Request, h http.Header) {
	sch := scheme(r)
	c.store.remove(canonicalKey(sch, r.Host, r.URL))
	base := &url.URL{Scheme: sch, Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath}
	origin := canonicalHost(sch, r.Host)
	for _, name := range [...]string{"Location", "Content-Location"} {
		v := h.Get(name)
		if v == "" {
			continue
		}
		u, err := base.Parse(v)
		if err != nil || !strings.EqualFold(u.Scheme, sch) || canonicalHost(sch, u.Host) != origin {
			continue
		}
		c.store.remove(canonicalKey(sch, u.Host, u))
	}
}
