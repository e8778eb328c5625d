package middleware

import (
	"math"
	"net/http"
	"net/netip"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/time/rate"
)

// RateLimitOptions configure a RateLimiter. Zero values take the defaults
// given; the configuration (edge/config.RateLimit) has validated them already.
type RateLimitOptions struct {
	// Requests is the number of tokens added to a client's bucket every Per.
	// It must be at least 1.
	Requests int
	// Per is the refill period (0: one second).
	Per time.Duration
	// Burst is the size of a client's bucket: the requests it may make at
	// once after being idle (0: Requests).
	Burst int
	// MaxClients bounds the client keys tracked at once (0: 100000).
	MaxClients int
	// ClientIP resolves the client's address, through trusted proxies. nil,
	// or an invalid Addr, means the IP of r.RemoteAddr.
	ClientIP func(*http.Request) netip.Addr
	// Now is the clock of the buckets and of the key cache's expiry
	// (nil: time.Now). Tests set it; with it set the key cache has no
	// periodic clean-up, only the one writes and CleanUp do.
	Now func() time.Time
}

// Defaults of RateLimitOptions.
const (
	defaultRatePer        = time.Second
	defaultRateMaxClients = 100_000
	// maxBucketLifetime caps the idle time after which a key is forgotten,
	// for absurd settings (a huge Burst refilled once a year).
	maxBucketLifetime = 365 * 24 * time.Hour
)

// RateLimiter is a token bucket per client (golang.org/x/time/rate): Burst
// requests at once, refilled at Requests per Per. A request that finds its
// bucket empty gets 429 Too Many Requests with Retry-After (whole seconds
// until a token is there, at least 1) and a short plain-text body; it does
// not take a token, so a client hammering an empty bucket does not push its
// own recovery further out.
//
// Clients are keyed by IP address. An IPv4 address (also IPv4-mapped
// IPv6) is its own key; an IPv6 address is keyed by its /64 prefix, the
// smallest block a site is normally given, so that one host cannot get a
// fresh bucket per address of its subnet (at the price of sharing a
// bucket with the rest of that /64). A request whose address cannot be
// parsed shares a single bucket with every other such request.
//
// Memory is bounded: the buckets live in an otter cache of at most
// MaxClients entries (about 200 bytes each), and a bucket is forgotten once
// it has been idle for as long as it takes to refill completely (plus a
// second for the cache's timer precision). A forgotten key then comes back
// with a full bucket, exactly what it would have had, so expiry never grants
// extra tokens. Eviction for size can: when more than MaxClients clients are
// active at once, the cache (W-TinyLFU) drops the keys least likely to be
// used again, and such a key, if it comes back before its bucket would have
// refilled, starts full. Clients that keep sending (the ones worth limiting)
// are the ones the cache keeps.
//
// The hot path is a lock-free cache read and the bucket's own short mutex;
// it does not allocate for a known client (see BenchmarkRateLimitAllow).
// A RateLimiter is safe for concurrent use. Close stops the cache's
// periodic clean-up goroutine when the limiter is no longer used (the
// cache's other maintenance runs in short-lived goroutines that end by
// themselves).
type RateLimiter struct {
	limit    rate.Limit
	burst    int
	now      func() time.Time
	clientIP func(*http.Request) netip.Addr
	clients  *otter.Cache[clientKey, *rate.Limiter]
}

// clientKey is an IPv4 address in its IPv4-mapped IPv6 form, or an IPv6
// /64 prefix with the low 64 bits zero.
type clientKey [16]byte

// NewRateLimiter returns a limiter for o. It panics if o.Requests is less
// than 1 or another field is negative: the configuration rules those out.
func NewRateLimiter(o RateLimitOptions) *RateLimiter {
	if o.Requests < 1 || o.Per < 0 || o.Burst < 0 || o.MaxClients < 0 {
		panic("middleware: invalid RateLimitOptions")
	}
	if o.Per == 0 {
		o.Per = defaultRatePer
	}
	if o.Burst == 0 {
		o.Burst = o.Requests
	}
	if o.MaxClients == 0 {
		o.MaxClients = defaultRateMaxClients
	}
	// Requests/Per rather than rate.Every(Per/Requests): the same rate
	// without truncating the interval to whole nanoseconds.
	limit := rate.Limit(float64(o.Requests) / o.Per.Seconds())
	l := &RateLimiter{
		limit:    limit,
		burst:    o.Burst,
		now:      o.Now,
		clientIP: o.ClientIP,
	}
	opts := &otter.Options[clientKey, *rate.Limiter]{
		MaximumSize:      o.MaxClients,
		ExpiryCalculator: otter.ExpiryAccessing[clientKey, *rate.Limiter](refillTime(limit, o.Burst)),
	}
	if o.Now != nil {
		opts.Clock = nowClock(o.Now)
	} else {
		l.now = time.Now
	}
	l.clients = otter.Must(opts)
	return l
}

// refillTime is how long an empty bucket takes to fill up, plus a second:
// an entry read last may expire up to a second early (otter.ExpiryCalculator).
func refillTime(limit rate.Limit, burst int) time.Duration {
	secs := float64(burst)/float64(limit) + 1
	if secs*float64(time.Second) >= float64(maxBucketLifetime) {
		return maxBucketLifetime
	}
	return time.Duration(math.Ceil(secs * float64(time.Second)))
}

// Handler returns next behind the limit; it is a Middleware.
func (l *RateLimiter) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := l.now()
		lim := l.bucket(l.key(r))
		if lim.AllowN(now, 1) { // takes a token only when there is one
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Retry-After", itoa(l.retryAfter(lim, now)))
		plainError(w, http.StatusTooManyRequests)
	})
}

// Len returns the number of client keys tracked, an estimate that may
// briefly exceed MaxClients until the cache's maintenance has run.
func (l *RateLimiter) Len() int { return l.clients.EstimatedSize() }

// Close stops the goroutine that cleans up expired keys; it may be called
// more than once. The limiter keeps answering afterwards (expired keys are
// then removed only as new keys are written), so its owner may close it as
// soon as a reload has replaced it, while old requests still finish on it.
// Without Close the goroutine ends only after the limiter is collected.
func (l *RateLimiter) Close() { l.clients.StopAllGoroutines() }

// bucket returns the bucket of k, making a full one for a new key.
func (l *RateLimiter) bucket(k clientKey) *rate.Limiter {
	if lim, ok := l.clients.GetIfPresent(k); ok {
		return lim
	}
	lim, _ := l.clients.SetIfAbsent(k, rate.NewLimiter(l.limit, l.burst))
	return lim
}

// key is the client's key: ClientIP's answer, else r.RemoteAddr's IP.
func (l *RateLimiter) key(r *http.Request) clientKey {
	var a netip.Addr
	if l.clientIP != nil {
		a = l.clientIP(r)
	}
	if !a.IsValid() {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			a = ap.Addr()
		} else {
			a, _ = netip.ParseAddr(r.RemoteAddr) // invalid on error: the shared key
		}
	}
	return keyOf(a)
}

// keyOf maps an address to its key: IPv4 (also IPv4-mapped) as itself,
// IPv6 by its /64 (zone dropped). The invalid Addr maps to all zeros.
func keyOf(a netip.Addr) clientKey {
	a = a.Unmap()
	k := clientKey(a.As16())
	if a.Is6() {
		clear(k[8:])
	}
	return k
}

// retryAfter is the delay, in whole seconds rounded up and at least 1, that
// a reservation would get: the time the bucket needs to hold one token. It
// reads the bucket without reserving, so a rejected request takes nothing.
func (l *RateLimiter) retryAfter(lim *rate.Limiter, now time.Time) int {
	missing := 1 - lim.TokensAt(now)
	secs := math.Ceil(missing / float64(l.limit))
	switch {
	case !(secs >= 1): // also NaN
		return 1
	case secs > math.MaxInt32:
		return math.MaxInt32
	}
	return int(secs)
}

// nowClock is an otter.Clock reading RateLimitOptions.Now. It has no ticks, so the cache
// runs no periodic clean-up goroutine with it.
type nowClock func() time.Time

func (c nowClock) NowNano() int64                    { return c().UnixNano() }
func (nowClock) Tick(time.Duration) <-chan time.Time { return nil }
