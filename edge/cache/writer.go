package cache

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// intercept says what captureWriter does with the final response of next.
type intercept uint8

const (
	passThrough    intercept = iota
	gotNotModified           // a 304 to the cache's own conditional: freshen and serve stored
	gotServerError           // a 5xx while stale-if-error applies: discard, serve stale
)

// captureWriter is the ResponseWriter next gets for a GET/HEAD that is
// forwarded. It streams the response to the client (rw) as next writes it and
// tees the body into a buffer that becomes a stored entry only when complete.
// For a background revalidation rw is nil. Like any ResponseWriter it is used
// by one goroutine at a time.
type captureWriter struct {
	c   *Cache
	rw  http.ResponseWriter // the client; nil in the background
	req *http.Request       // the client's request: storability and Vary
	ri  *requestInfo
	fo  *forwardOpts
	ctx context.Context // a done context means the response is not complete

	h                 http.Header // what next writes into
	reqTime, respTime time.Time
	status            int
	wroteHeader       bool
	sent              bool // a final status went to rw
	intercept         intercept
	notModified       bool // the client got a 304 we generated; the body goes only to the buffer

	pending  *entry // the entry being filled, nil when not storing
	buf      []byte
	reserved int64 // bytes of buf counted in Cache.buffering
	declared int64 // Content-Length next declared, -1 if none
	failed   bool  // a write to the client failed
}

func (w *captureWriter) Header() http.Header { return w.h }

// Unwrap lets http.NewResponseController reach the client's writer (for
// deadlines and hijacking). It is nil in the background.
func (w *captureWriter) Unwrap() http.ResponseWriter { return w.rw }

func (w *captureWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if w.rw != nil && w.fo.stale == nil {
			w.informational(code)
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	w.respTime = w.c.now()
	if w.fo.stale != nil && code == http.StatusNotModified {
		w.intercept = gotNotModified
		return
	}
	if w.fo.staleIfError && isServerError(code) {
		w.intercept = gotServerError
		// Stale will be served and nothing stored: waiters need not wait.
		w.fo.flight.release(false)
		return
	}
	if w.fo.store {
		w.startStoring(code)
	}
	if w.pending == nil {
		// Waiters need not wait for a body that will not be stored.
		w.fo.flight.release(false)
	}
	if w.rw == nil {
		return
	}
	dst := w.rw.Header()
	copyInto(dst, w.h)
	clientCode := code
	cs := cacheStatus{fwd: w.fo.fwd, stored: w.pending != nil, collapsed: w.fo.collapsed}
	if w.fo.evalClientCond && code == http.StatusOK &&
		notModified(w.req.Header, w.h.Get("Etag"), w.h.Get("Last-Modified")) {
		w.notModified = true
		clientCode = http.StatusNotModified
		cs.fwdStatus = code
		stripForNotModified(dst)
	}
	appendCacheStatus(dst, cs.String())
	w.rw.WriteHeader(clientCode)
	w.sent = true
}

// initialBuffer bounds the buffer allocated up front for a declared
// Content-Length; it grows as the body arrives.
const initialBuffer = 64 << 10

// startStoring decides at the response's header whether it will be stored.
// A response that is not storable because of what it says marks its key for
// passing (see passList); one that says no-store also removes the entry it
// revalidates. A declared Content-Length that does not fit in what is left
// of MaxBuffering is not stored either.
func (w *captureWriter) startStoring(code int) {
	e, why := w.c.buildEntry(w.req, w.ri, code, w.h, w.reqTime, w.respTime)
	if why != refuseNone {
		if why.byResponse() && !isServerError(code) {
			w.c.pass.add(w.fo.key, w.respTime)
		}
		if why == refuseNoStore && w.fo.stale != nil {
			w.c.store.removeVariant(w.fo.key, w.fo.stale)
		}
		return
	}
	if n, err := strconv.ParseInt(w.h.Get("Content-Length"), 10, 64); err == nil {
		// buildEntry checked 0 <= n <= MaxObjectSize.
		if w.c.buffering.Load()+n > w.c.maxBuffering {
			return
		}
		w.declared = n
		w.buf = make([]byte, 0, min(n, initialBuffer))
	}
	w.pending = e
}

// reserve counts n more bytes buffered against MaxBuffering and reports
// whether they fit.
func (w *captureWriter) reserve(n int64) bool {
	for {
		cur := w.c.buffering.Load()
		if cur+n > w.c.maxBuffering {
			return false
		}
		if w.c.buffering.CompareAndSwap(cur, cur+n) {
			w.reserved += n
			return true
		}
	}
}

// freeBuffer lets go of the buffer and its reservation. It is idempotent.
func (w *captureWriter) freeBuffer() {
	w.buf = nil
	if w.reserved != 0 {
		w.c.buffering.Add(-w.reserved)
		w.reserved = 0
	}
}

// informational passes a 1xx (e.g. 103 Early Hints) to the client with the
// fields next set for it, then restores the client's header map so those
// fields do not leak into the final response.
func (w *captureWriter) informational(code int) {
	dst := w.rw.Header()
	saved := make(map[string][]string, len(w.h))
	for k, vv := range w.h {
		saved[k] = dst[k] // nil when absent
		dst[k] = vv
	}
	w.rw.WriteHeader(code)
	for k, vv := range saved {
		if vv == nil {
			delete(dst, k)
		} else {
			dst[k] = vv
		}
	}
}

func (w *captureWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.intercept != passThrough {
		return len(p), nil
	}
	if w.pending != nil {
		n := int64(len(p))
		switch {
		case int64(len(w.buf))+n > w.c.maxObject:
			w.c.pass.add(w.fo.key, w.c.now())
			w.drop(false)
		case !w.reserve(n):
			w.drop(false) // over MaxBuffering: pass the rest through
		default:
			w.buf = append(w.buf, p...)
		}
	}
	if !w.sent || w.notModified {
		return len(p), nil
	}
	n, err := w.rw.Write(p)
	if err != nil {
		w.failed = true
		w.drop(true)
	}
	return n, err
}

// Flush sends what next has written so far to the client.
func (w *captureWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent || w.notModified {
		return
	}
	if f, ok := w.rw.(http.Flusher); ok {
		f.Flush()
		return
	}
	_ = http.NewResponseController(w.rw).Flush()
}

// drop abandons storing this response; retry is as for flight.retry.
func (w *captureWriter) drop(retry bool) {
	w.pending = nil
	w.freeBuffer()
	w.fo.flight.release(retry)
}

// complete runs after next returned normally: it stores the response if it
// is storable and complete, and returns the stored entry or nil.
func (w *captureWriter) complete() *entry {
	w.passTrailers()
	if !w.wroteHeader {
		// next returned without writing (or hijacked the connection): pass
		// on what it set, as net/http would, and store nothing.
		if w.rw != nil {
			copyInto(w.rw.Header(), w.h)
		}
		return nil
	}
	e := w.pending
	switch {
	case e == nil:
		return nil
	case w.failed, w.ctx.Err() != nil,
		w.declared >= 0 && int64(len(w.buf)) != w.declared: // partial
		w.drop(true)
		return nil
	}
	e.setBody(w.fo.key, w.buf)
	w.c.store.put(w.fo.key, e, w.req, w.fo.stale)
	w.c.pass.forget(w.fo.key)
	w.c.stored.Add(1)
	w.pending = nil
	w.freeBuffer()
	w.fo.flight.release(false)
	return e
}

// passTrailers hands the client the trailers next set after the body:
// fields announced in Trailer and fields with http.TrailerPrefix.
func (w *captureWriter) passTrailers() {
	if !w.sent || w.notModified {
		return
	}
	dst := w.rw.Header()
	for _, v := range w.h["Trailer"] {
		for v != "" {
			var name string
			if i := strings.IndexByte(v, ','); i >= 0 {
				name, v = v[:i], v[i+1:]
			} else {
				name, v = v, ""
			}
			name = http.CanonicalHeaderKey(trimOWS(name))
			if vv, ok := w.h[name]; ok && name != "" {
				dst[name] = vv
			}
		}
	}
	for k, vv := range w.h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			dst[k] = vv
		}
	}
}

// copyInto sets every field of src in dst, replacing what dst had.
func copyInto(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = vv
	}
}

// stripForNotModified removes the fields that describe a body from a
// response turned into a 304 (RFC 9110 §15.4.5).
func stripForNotModified(h http.Header) {
	for _, k := range [...]string{"Content-Length", "Content-Type", "Content-Encoding", "Content-Range", "Transfer-Encoding"} {
		delete(h, k)
	}
}

// statusWriter wraps the client's writer for unsafe methods: it records the
// status (to decide invalidation) and labels the response fwd=method.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code < 100 || code > 199 || code == http.StatusSwitchingProtocols) {
		w.status = code
		appendCacheStatus(w.Header(), cacheStatus{fwd: "method"}.String())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// cacheName identifies this cache in Cache-Status (RFC 9211 §2).
const cacheName = "gatehouse"

// cacheStatus is one Cache-Status list member (RFC 9211 §2).
type cacheStatus struct {
	hit       bool
	fwd       string // bypass, method, uri-miss, vary-miss, request, stale
	fwdStatus int
	ttl       time.Duration
	hasTTL    bool
	stored    bool
	collapsed int8 // 1: collapsed, -1: collapsed=?0, 0: absent
	detail    string
}

func (s cacheStatus) String() string {
	var arr [128]byte
	b := append(arr[:0], cacheName...)
	if s.hit {
		b = append(b, "; hit"...)
	}
	if s.fwd != "" {
		b = append(b, "; fwd="...)
		b = append(b, s.fwd...)
	}
	if s.fwdStatus != 0 {
		b = append(b, "; fwd-status="...)
		b = strconv.AppendInt(b, int64(s.fwdStatus), 10)
	}
	if s.hasTTL {
		b = append(b, "; ttl="...)
		b = strconv.AppendInt(b, floorSeconds(s.ttl), 10)
	}
	if s.stored {
		b = append(b, "; stored"...)
	}
	switch s.collapsed {
	case 1:
		b = append(b, "; collapsed"...)
	case -1:
		b = append(b, "; collapsed=?0"...)
	}
	if s.detail != "" {
		b = append(b, "; detail="...)
		b = append(b, s.detail...)
	}
	return string(b)
}

func floorSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d < 0 && d%time.Second != 0 {
		s--
	}
	return s
}

// appendCacheStatus adds this cache's member after any from caches nearer
// the origin (RFC 9211 §2: the last member is the cache nearest the client).
func appendCacheStatus(h http.Header, v string) {
	old := h["Cache-Status"]
	h["Cache-Status"] = append(old[:len(old):len(old)], v)
}
