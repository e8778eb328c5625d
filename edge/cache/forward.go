package cache

import (
	"context"
	"errors"
	"net/http"
)

// forwardOpts describes one forward of a GET/HEAD to next.
type forwardOpts struct {
	key       string
	fwd       string  // Cache-Status fwd reason
	store     bool    // try to store the response
	collapsed int8    // -1: waited for another forward that gave nothing usable
	flight    *flight // led by this forward; released once storing is decided
	done      bool    // the request was answered while collapsing: no forward

	// stale is the stored response being revalidated: the forward carries
	// its validators, and a 304 freshens it. Nil for a plain miss.
	stale *entry
	// staleIfError: a 5xx, or a failure before any header, is answered with
	// stale instead (RFC 5861 §4).
	staleIfError bool
	// evalClientCond: the client's If-None-Match/If-Modified-Since were
	// taken off the forwarded request (so a full response can be stored) and
	// are evaluated by the cache on the response.
	evalClientCond bool
}

// conditionalHeaders are the client's validators, replaced by the cache's own.
var conditionalHeaders = [...]string{"If-None-Match", "If-Modified-Since"}

// forward sends r to next and answers the client from what comes back.
func (c *Cache) forward(w http.ResponseWriter, r *http.Request, ri *requestInfo, next http.Handler, fo *forwardOpts) {
	out := r
	if fo.store && (fo.stale != nil || ri.hasConditional) {
		out = r.Clone(r.Context())
		for _, k := range conditionalHeaders {
			delete(out.Header, k)
		}
		fo.evalClientCond = ri.hasConditional
		setValidators(out.Header, fo.stale)
	}
	cw := &captureWriter{
		c: c, rw: w, req: r, ri: ri, fo: fo, ctx: r.Context(),
		h: make(http.Header), declared: -1, reqTime: c.now(),
	}
	defer cw.freeBuffer()
	if c.callNext(next, cw, out, fo.staleIfError) {
		status := 0 // next failed before any header: no fwd-status
		if cw.intercept == gotServerError {
			status = cw.status
		}
		c.serveStaleOnError(w, r, fo, status)
		return
	}
	switch cw.intercept {
	case gotNotModified:
		e, stored := c.applyNotModified(r, ri, fo, cw)
		// Waiters can use the freshened entry now, without waiting for
		// this client to take the body.
		fo.flight.release(false)
		cs := cacheStatus{fwd: fo.fwd, fwdStatus: http.StatusNotModified, stored: stored}
		now := c.now()
		_, cs.ttl = judge(e, &requestInfo{}, now)
		cs.hasTTL = stored
		c.serveEntry(w, r, e, now, cs)
	case gotServerError:
		c.serveStaleOnError(w, r, fo, cw.status)
	default:
		cw.complete()
	}
}

// setValidators adds the stored response's validators to a forwarded request.
func setValidators(h http.Header, e *entry) {
	if e == nil {
		return
	}
	if e.etag != "" {
		h["If-None-Match"] = []string{e.etag}
	}
	if e.lastModified != "" {
		h["If-Modified-Since"] = []string{e.lastModified}
	}
}

// callNext runs next. If next panics, nothing is stored; when rescue is set
// and no header reached the client yet, the panic is recovered and callNext
// reports true so the caller can serve stale. Otherwise the panic (usually
// http.ErrAbortHandler) continues to net/http, which aborts the response.
func (c *Cache) callNext(next http.Handler, cw *captureWriter, out *http.Request, rescue bool) (rescued bool) {
	returned := false
	defer func() {
		if returned {
			return
		}
		cw.failed = true
		cw.drop(true)
		if rescue && !cw.sent {
			if p := recover(); p != nil {
				rescued = true
				if p != http.ErrAbortHandler {
					c.log.Error("cache: handler panicked; serving stale", "key", cw.fo.key, "panic", p)
				}
			}
		}
	}()
	next.ServeHTTP(cw, out)
	returned = true
	return false
}

// applyNotModified freshens the revalidated entry with a 304's header
// (RFC 9111 §4.3.4) and returns the response to serve. The freshened entry
// replaces the stored one unless the merged response itself may not be
// stored (a 304 with no-store, say), in which case the stored one is removed.
// The request does not matter: an Authorization on it does not stop the
// update of a response that was stored.
func (c *Cache) applyNotModified(req *http.Request, ri *requestInfo, fo *forwardOpts, cw *captureWriter) (*entry, bool) {
	old := fo.stale
	c.revalidated.Add(1)
	merged := mergeNotModified(old.header, cw.h, cw.respTime)
	e, why := c.buildEntry(req, ri, old.status, merged, cw.reqTime, cw.respTime)
	e.setBody(fo.key, old.body)
	if why.byResponse() {
		c.store.removeVariant(fo.key, old)
		c.pass.add(fo.key, cw.respTime)
		return e, false
	}
	c.store.put(fo.key, e, req, old)
	c.pass.forget(fo.key)
	return e, true
}

func (c *Cache) serveStaleOnError(w http.ResponseWriter, r *http.Request, fo *forwardOpts, status int) {
	fo.flight.release(false)
	c.staleServed.Add(1)
	now := c.now()
	_, ttl := judge(fo.stale, &requestInfo{}, now)
	c.serveEntry(w, r, fo.stale, now, cacheStatus{
		fwd: fo.fwd, fwdStatus: status, ttl: ttl, hasTTL: true, detail: "stale-if-error",
	})
}

// revalidateInBackground starts one refresh of e (stale-while-revalidate,
// RFC 5861 §3) unless one is running for it, the Cache is closed, or
// maxBackground refreshes are running. The goroutine is owned by the Cache:
// its context ends when Close is called (or after backgroundTimeout), and
// Close waits for it.
func (c *Cache) revalidateInBackground(r *http.Request, next http.Handler, key string, e *entry) {
	if !e.revalidating.CompareAndSwap(false, true) {
		return
	}
	c.bgMu.Lock()
	if c.bgClosed || !c.bgSem.TryAcquire(1) {
		c.bgMu.Unlock()
		e.revalidating.Store(false)
		return
	}
	c.bgWG.Add(1)
	c.bgMu.Unlock()

	// Keep the request's values (server, connection info) but not its
	// cancellation: the client is answered long before the refresh ends.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), backgroundTimeout)
	stop := context.AfterFunc(c.bgCtx, cancel)
	out := r.Clone(ctx)
	for _, k := range [...]string{"If-None-Match", "If-Modified-Since", "If-Range", "Range", "Cache-Control", "Pragma"} {
		delete(out.Header, k)
	}
	setValidators(out.Header, e)
	out.Method = http.MethodGet
	out.Body = http.NoBody
	out.ContentLength = 0
	go func() {
		defer c.bgWG.Done()
		defer c.bgSem.Release(1)
		defer cancel()
		defer stop()
		defer e.revalidating.Store(false)
		c.backgroundFetch(next, out, key, e)
	}()
}

// backgroundFetch runs a background revalidation to completion. A 304
// freshens e; a storable 200 replaces it; a 5xx or a failure leaves it.
func (c *Cache) backgroundFetch(next http.Handler, out *http.Request, key string, e *entry) {
	ri := &requestInfo{}
	fo := &forwardOpts{key: key, fwd: "stale", store: true, stale: e, staleIfError: true}
	cw := &captureWriter{
		c: c, req: out, ri: ri, fo: fo, ctx: out.Context(),
		h: make(http.Header), declared: -1, reqTime: c.now(),
	}
	defer cw.freeBuffer()
	defer func() {
		if p := recover(); p != nil {
			if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				c.log.Debug("cache: background revalidation aborted", "key", key)
				return
			}
			c.log.Error("cache: background revalidation panicked", "key", key, "panic", p)
		}
	}()
	next.ServeHTTP(cw, out)
	switch cw.intercept {
	case gotNotModified:
		if out.Context().Err() == nil {
			c.applyNotModified(out, ri, fo, cw)
		}
	case gotServerError:
		c.log.Debug("cache: background revalidation got a server error", "key", key, "status", cw.status)
	default:
		cw.complete()
	}
}
