package cache

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// entry is one stored response (one Vary variant of a URL). It is immutable
// once published to the store, apart from the revalidating flag; a 304 or a
// new 200 replaces it with a new entry.
type entry struct {
	status int
	header http.Header // stored header: no hop-by-hop, Age or Cache-Status; has Date and Content-Length
	body   []byte

	cc           directives
	requestTime  time.Time
	responseTime time.Time
	initialAge   time.Duration // corrected_initial_age, RFC 9111 §4.2.3
	lifetime     time.Duration // freshness_lifetime, RFC 9111 §4.2.1
	etag         string
	lastModified string

	varyNames  []string // canonical names of the request fields the response varies on
	varyValues []string // their normalised values in the request that produced it

	retainUntil time.Time // after this the entry is useless (not even stale) and leaves the store
	weight      int64

	// revalidating is set while a background revalidation of this entry runs,
	// so that many stale hits start exactly one.
	revalidating atomic.Bool
}

// refusal says why a response is not stored; the zero value means it may be.
type refusal string

const (
	refuseNone refusal = ""
	// Refusals because of the request: the response might be stored for
	// another request.
	refuseMethod     refusal = "method"
	refuseRange      refusal = "range"
	refuseReqNoStore refusal = "request-no-store"
	refuseAuth       refusal = "authorization"
	// Refusals because of the response itself.
	refuseNoStore   refusal = "no-store"
	refuseStatus    refusal = "status"
	refusePrivate   refusal = "private"
	refuseSetCookie refusal = "set-cookie"
	refuseTrailer   refusal = "trailer"
	refuseVaryStar  refusal = "vary-star"
	refuseTooLarge  refusal = "too-large"
	refuseNoFresh   refusal = "no-freshness"
)

// byResponse reports whether the response itself is not storable, whatever
// the request: buildEntry checks those reasons before the Authorization rule.
func (r refusal) byResponse() bool {
	switch r {
	case refuseNone, refuseMethod, refuseRange, refuseReqNoStore, refuseAuth:
		return false
	}
	return true
}

// buildEntry turns a response into an entry (without its body) and decides
// whether a shared cache may store it (RFC 9111 §3, §3.5). The entry is
// always built, so that a response freshened by a 304 can be served even when
// it may no longer be stored. raw is the response header as the origin sent
// it; it is not modified.
func (c *Cache) buildEntry(req *http.Request, ri *requestInfo, status int, raw http.Header, reqTime, respTime time.Time) (*entry, refusal) {
	cc := parseDirectives(raw["Cache-Control"])
	names, star := varyNames(raw["Vary"])
	e := &entry{
		status:       status,
		header:       storedHeader(raw),
		cc:           cc,
		requestTime:  reqTime,
		responseTime: respTime,
		varyNames:    names,
	}
	date, err := http.ParseTime(raw.Get("Date"))
	if err != nil {
		// RFC 9110 §6.6.1: a cache adds a Date to a response that lacks one.
		date = respTime
		e.header["Date"] = []string{respTime.UTC().Format(http.TimeFormat)}
	}
	var ageValue time.Duration
	if a, ok := parseDeltaSeconds(strings.TrimSpace(raw.Get("Age"))); ok {
		ageValue = secs(a)
	}
	e.initialAge = correctedInitialAge(date, reqTime, respTime, ageValue)
	lifetime, explicit := freshnessLifetime(&cc, raw, status, date)
	e.lifetime = lifetime
	e.etag = e.header.Get("Etag")
	e.lastModified = e.header.Get("Last-Modified")
	if len(names) > 0 {
		e.varyValues = make([]string, len(names))
		for i, n := range names {
			e.varyValues[i] = normaliseValues(req.Header[n])
		}
	}
	freshUntil := respTime.Add(e.lifetime - e.initialAge)
	if freshUntil.Before(respTime) {
		freshUntil = respTime
	}
	keep := c.staleRetention
	if cc.has(ccStaleWhileRevalidate) {
		keep = max(keep, secs(cc.staleWhileRevalidate))
	}
	if cc.has(ccStaleIfError) {
		keep = max(keep, secs(cc.staleIfError))
	}
	e.retainUntil = freshUntil.Add(keep)

	hasValidator := e.etag != "" || e.lastModified != ""
	_, auth := req.Header["Authorization"]
	_, cookie := raw["Set-Cookie"]
	_, trailer := raw["Trailer"]
	switch {
	case req.Method != http.MethodGet:
		return e, refuseMethod
	case ri.hasRange:
		return e, refuseRange
	case ri.cc.has(ccNoStore):
		return e, refuseReqNoStore
	case !understoodStatus(status):
		return e, refuseStatus
	case cc.has(ccNoStore) && !cc.has(ccMustUnderstand):
		// must-understand lifts no-store for a cache that understands the
		// status code (RFC 9111 §5.2.2.3), which understoodStatus checked.
		return e, refuseNoStore
	case cc.has(ccPrivate):
		return e, refusePrivate
	case cookie:
		return e, refuseSetCookie
	case trailer:
		return e, refuseTrailer
	case star:
		return e, refuseVaryStar
	case !contentLengthWithin(raw, c.maxObject):
		return e, refuseTooLarge
	case !explicit && !cc.has(ccPublic) && !heuristicallyCacheable(status):
		// RFC 9111 §3: explicit freshness, public, or a heuristically
		// cacheable status code is required.
		return e, refuseNoFresh
	case (e.lifetime <= 0 || cc.has(ccNoCache)) && !hasValidator:
		// Storable, but useless: it could never be served without a full
		// fetch. Not stored.
		return e, refuseNoFresh
	case auth && !cc.has(ccMustRevalidate|ccPublic|ccSMaxAge):
		// Last, so that refuseAuth means the response is otherwise storable.
		return e, refuseAuth
	}
	return e, refuseNone
}

// contentLengthWithin reports whether a declared Content-Length (if any) is a
// valid length of at most limit.
func contentLengthWithin(h http.Header, limit int64) bool {
	cl := h.Get("Content-Length")
	if cl == "" {
		return true
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return err == nil && n >= 0 && n <= limit
}

// setBody attaches the complete body and fixes Content-Length and weight.
func (e *entry) setBody(key string, body []byte) {
	// Keep the stored slice tight so the weight reflects the memory held.
	if cap(body) > len(body)+len(body)/8 {
		body = append([]byte(nil), body...)
	}
	e.body = body
	if e.status != http.StatusNoContent && e.status != http.StatusNotModified {
		e.header["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	e.weight = entryOverhead + int64(len(key)) + int64(len(body)) + headerSize(e.header)
}

const entryOverhead = 256

func headerSize(h http.Header) int64 {
	var n int64
	for k, vv := range h {
		n += int64(len(k))
		for _, v := range vv {
			n += int64(len(v)) + 4
		}
	}
	return n
}

// hopByHop lists the fields a proxy never stores or forwards (RFC 9110 §7.6.1).
var hopByHop = map[string]bool{
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Connection":    true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// notStored lists end-to-end fields the cache drops: Age is recomputed on
// every use and Cache-Status describes one trip through the caches.
var notStored = map[string]bool{
	"Age":          true,
	"Cache-Status": true,
}

// storedHeader copies h without hop-by-hop fields, fields named in Connection,
// Age and Cache-Status. Value slices share one backing array and are clipped,
// so an append by a later user never writes into another field.
func storedHeader(h http.Header) http.Header {
	conn := h["Connection"]
	skip := func(k string) bool {
		k = http.CanonicalHeaderKey(k)
		if hopByHop[k] || notStored[k] || strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
		for _, v := range conn {
			if containsToken(v, k) {
				return true
			}
		}
		return false
	}
	nv := 0
	for k, vv := range h {
		if !skip(k) {
			nv += len(vv)
		}
	}
	out := make(http.Header, len(h)+1)
	all := make([]string, nv)
	for k, vv := range h {
		if skip(k) {
			continue
		}
		n := copy(all, vv)
		out[http.CanonicalHeaderKey(k)] = all[:n:n]
		all = all[n:]
	}
	return out
}

// notUpdated lists the fields a 304 must not overwrite in the stored response
// (RFC 9111 §3.2: Content-Length, and fields describing the stored content).
var notUpdated = map[string]bool{
	"Content-Length":   true,
	"Content-Encoding": true,
	"Content-Range":    true,
	"Content-Type":     true,
	"Set-Cookie":       true,
}

// mergeNotModified returns the raw header for a stored response freshened by
// a 304 (RFC 9111 §4.3.4): the stored fields, replaced by those in the 304.
// The 304's Age is carried so buildEntry can compute the new age; a 304
// without Date gets the time it was received.
func mergeNotModified(stored, h304 http.Header, respTime time.Time) http.Header {
	merged := make(http.Header, len(stored)+4)
	for k, vv := range stored {
		merged[k] = vv
	}
	for k, vv := range storedHeader(h304) {
		if !notUpdated[k] {
			merged[k] = vv
		}
	}
	if _, ok := h304["Date"]; !ok {
		merged["Date"] = []string{respTime.UTC().Format(http.TimeFormat)}
	}
	if a, ok := h304["Age"]; ok {
		merged["Age"] = a
	}
	return merged
}

// varyNames parses Vary into canonical, de-duplicated names; star reports "*".
func varyNames(values []string) (names []string, star bool) {
	for _, v := range values {
		for v != "" {
			var el string
			if i := strings.IndexByte(v, ','); i >= 0 {
				el, v = v[:i], v[i+1:]
			} else {
				el, v = v, ""
			}
			el = trimOWS(el)
			if el == "" {
				continue
			}
			if el == "*" {
				return nil, true
			}
			el = http.CanonicalHeaderKey(el)
			dup := false
			for _, n := range names {
				dup = dup || n == el
			}
			if !dup {
				names = append(names, el)
			}
		}
	}
	return names, false
}

// normaliseValues joins the list elements of a request field with "," after
// trimming whitespace, so "gzip, br" and "gzip,br" select the same variant.
func normaliseValues(vals []string) string {
	var b strings.Builder
	for _, v := range vals {
		for v != "" {
			var el string
			if i := strings.IndexByte(v, ','); i >= 0 {
				el, v = v[:i], v[i+1:]
			} else {
				el, v = v, ""
			}
			if el = trimOWS(el); el == "" {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(el)
		}
	}
	return b.String()
}

// normalisedEqual reports whether normaliseValues(vals) == want without allocating.
func normalisedEqual(vals []string, want string) bool {
	pos, first := 0, true
	for _, v := range vals {
		for v != "" {
			var el string
			if i := strings.IndexByte(v, ','); i >= 0 {
				el, v = v[:i], v[i+1:]
			} else {
				el, v = v, ""
			}
			if el = trimOWS(el); el == "" {
				continue
			}
			if !first {
				if pos >= len(want) || want[pos] != ',' {
					return false
				}
				pos++
			}
			first = false
			if !strings.HasPrefix(want[pos:], el) {
				return false
			}
			pos += len(el)
		}
	}
	return pos == len(want)
}

// matches reports whether the request selects this stored response: every
// field nominated by its Vary has the same normalised value (RFC 9111 §4.1).
func (e *entry) matches(req *http.Request) bool {
	for i, n := range e.varyNames {
		if !normalisedEqual(req.Header[n], e.varyValues[i]) {
			return false
		}
	}
	return true
}
