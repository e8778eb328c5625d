package cache

import (
	"net/http"
	"time"
)

const (
	// heuristicFraction and heuristicCap bound heuristic freshness
	// (RFC 9111 §4.2.2): 10% of the time since Last-Modified, at most a day.
	heuristicFraction = 10
	heuristicCap      = 24 * time.Hour
)

// heuristicallyCacheable reports the status codes RFC 9110 §15.1 defines as
// heuristically cacheable. 206 is left out: partial responses are never stored.
func heuristicallyCacheable(status int) bool {
	switch status {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// understoodStatus reports the final status codes whose caching requirements
// this cache implements (RFC 9111 §3: "the response status code is final and
// understood"). 206 and 304 are understood but never stored as responses.
func understoodStatus(status int) bool {
	switch status {
	case 200, 203, 204, 300, 301, 302, 303, 307, 308,
		400, 403, 404, 405, 410, 414, 451,
		500, 501, 502, 503, 504:
		return true
	}
	return false
}

// isServerError reports the statuses that trigger stale-if-error (RFC 5861 §4).
func isServerError(status int) bool {
	switch status {
	case 500, 502, 503, 504:
		return true
	}
	return false
}

// freshnessLifetime implements RFC 9111 §4.2.1 for a shared cache: s-maxage,
// then max-age, then Expires minus Date, then a heuristic from Last-Modified
// when the status is heuristically cacheable or the response is public.
// An invalid max-age/s-maxage or Expires yields zero (stale).
func freshnessLifetime(cc *directives, h http.Header, status int, date time.Time) (lifetime time.Duration, explicit bool) {
	switch {
	case cc.has(ccInvalidFreshness):
		return 0, true
	case cc.has(ccSMaxAge):
		return secs(cc.sMaxAge), true
	case cc.has(ccMaxAge):
		return secs(cc.maxAge), true
	}
	if v, ok := h["Expires"]; ok {
		if len(v) == 0 {
			return 0, true
		}
		exp, err := http.ParseTime(v[0])
		if err != nil {
			return 0, true // RFC 9111 §5.3: invalid Expires means "already expired"
		}
		if d := exp.Sub(date); d > 0 {
			return d, true
		}
		return 0, true
	}
	if !heuristicallyCacheable(status) && !cc.has(ccPublic) {
		return 0, false
	}
	lm, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil || !lm.Before(date) {
		return 0, false
	}
	d := date.Sub(lm) / heuristicFraction
	if d > heuristicCap {
		d = heuristicCap
	}
	return d.Truncate(time.Second), false
}

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }

// correctedInitialAge implements the first half of RFC 9111 §4.2.3.
func correctedInitialAge(date, requestTime, responseTime time.Time, ageValue time.Duration) time.Duration {
	apparent := responseTime.Sub(date)
	if apparent < 0 {
		apparent = 0
	}
	delay := responseTime.Sub(requestTime)
	if delay < 0 {
		delay = 0
	}
	corrected := ageValue + delay
	if apparent > corrected {
		return apparent
	}
	return corrected
}

// currentAge is corrected_initial_age + resident_time (RFC 9111 §4.2.3).
func (e *entry) currentAge(now time.Time) time.Duration {
	resident := now.Sub(e.responseTime)
	if resident < 0 {
		resident = 0
	}
	return e.initialAge + resident
}

// staleForbidden reports whether the response forbids serving it stale or
// without validation (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10).
func (e *entry) staleForbidden() bool {
	return e.cc.has(ccNoCache | ccMustRevalidate | ccProxyRevalidate | ccSMaxAge)
}

// verdict is what the cache may do with a selected stored response.
type verdict int

const (
	useFresh           verdict = iota // fresh and acceptable to the request
	useStale                          // stale, but the request's max-stale accepts it
	useStaleRevalidate                // stale within stale-while-revalidate
	forwardStale                      // must be validated: it is stale (fwd=stale)
	forwardRequest                    // fresh, but the request forbids using it (fwd=request)
)

// judge decides how a stored response may be used for a request at now, and
// returns its remaining freshness (negative when stale).
func judge(e *entry, ri *requestInfo, now time.Time) (verdict, time.Duration) {
	age := e.currentAge(now)
	ttl := e.lifetime - age
	fresh := ttl > 0 && !e.cc.has(ccNoCache)
	rc := &ri.cc
	blocked := ri.noCache ||
		(rc.has(ccMaxAge) && age > secs(rc.maxAge)) ||
		(rc.has(ccMinFresh) && ttl < secs(rc.minFresh))
	if fresh {
		if blocked {
			return forwardRequest, ttl
		}
		return useFresh, ttl
	}
	if blocked || e.staleForbidden() {
		return forwardStale, ttl
	}
	staleness := -ttl
	if rc.has(ccMaxStale) && (rc.has(ccMaxStaleAny) || staleness <= secs(rc.maxStale)) {
		return useStale, ttl
	}
	if e.cc.has(ccStaleWhileRevalidate) && staleness <= secs(e.cc.staleWhileRevalidate) {
		return useStaleRevalidate, ttl
	}
	return forwardStale, ttl
}

// staleIfErrorAllowed reports whether e may stand in for a 5xx or a failed
// forward (RFC 5861 §4): the response or the request carries stale-if-error
// and the staleness is within it, and nothing forbids serving stale.
func staleIfErrorAllowed(e *entry, ri *requestInfo, now time.Time) bool {
	if ri.noCache || e.staleForbidden() {
		return false
	}
	staleness := e.currentAge(now) - e.lifetime
	if staleness < 0 {
		staleness = 0
	}
	if e.cc.has(ccStaleIfError) && staleness <= secs(e.cc.staleIfError) {
		return true
	}
	return ri.cc.has(ccStaleIfError) && staleness <= secs(ri.cc.staleIfError)
}
