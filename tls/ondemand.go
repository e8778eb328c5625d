package tls

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Sentinel errors returned (wrapped) by [OnDemandPolicy.Decide],
// [OnDemandPolicy.Eligible] and [OnDemandPolicy.Reserve]; branch on them with
// errors.Is.
var (
	// ErrNotOnDemandName: the name is not a valid DNS name, is an IP
	// address, or belongs to no on_demand site. The ask endpoint was not
	// consulted.
	ErrNotOnDemandName = errors.New("name not eligible for on-demand TLS")
	// ErrAskDenied: the ask endpoint answered something other than 200
	// (possibly a cached answer), or no ask endpoint is configured.
	ErrAskDenied = errors.New("on-demand ask endpoint denied the name")
	// ErrAskFailed: the ask endpoint could not be reached or timed out
	// (possibly a briefly cached failure), or the caller's context ended
	// while waiting for it.
	ErrAskFailed = errors.New("on-demand ask endpoint failed")
	// ErrRateLimited (from Reserve): an issuance attempt was made for the
	// name less than NameInterval ago, or the global RateLimit per
	// RateWindow is spent.
	ErrRateLimited = errors.New("on-demand issuance rate limited")
)

// Defaults used for zero (or negative) fields of config.OnDemand, matching
// the configuration loader's defaults, and fixed limits of the policy.
const (
	defaultAskTTL       = 5 * time.Minute
	defaultRateLimit    = 10
	defaultRateWindow   = time.Minute
	defaultNameInterval = time.Minute
	defaultAskTimeout   = 5 * time.Second

	// maxFailTTL caps how long an unreachable ask endpoint is remembered:
	// long enough not to hammer it, short enough to recover quickly.
	maxFailTTL = 10 * time.Second
	// maxOnDemandEntries bounds each of the policy's maps (ask answers and
	// last-attempt times), so a flood of names cannot grow memory.
	maxOnDemandEntries = 10000
	// maxAskBody is how much of an ask response body is read (and drained).
	maxAskBody = 1 << 10
)

// OnDemandPolicy gates on-demand TLS in two steps.
//
// [OnDemandPolicy.Decide] says whether a name may have an on-demand
// certificate at all: name syntax, then the site matcher, then the ask cache,
// then the ask endpoint (concurrent asks for one name collapsed into one
// request), cheapest first so that junk never reaches the ask endpoint. It
// has no lasting effect but the cached answer, so it can back CertMagic's
// OnDemandConfig.DecisionFunc, which CertMagic consults not only before
// obtaining a certificate but also before loading one from storage and
// before renewing one. (The Manager's DecisionFunc allows a name whose
// certificate is in storage without asking, so stored certificates are
// served while the ask endpoint is down.)
//
// [OnDemandPolicy.Reserve] applies the issuance limits, per-name spacing and
// a global token bucket, and records an attempt. It must run only when a
// certificate is really about to be ordered from the CA (the Manager calls it
// from an Issuer wrapper), never on a handshake that merely loads or serves a
// stored certificate: otherwise a restart with more stored certificates than
// RateLimit would refuse to serve most of them.
//
// An OnDemandPolicy is safe for concurrent use. One mutex guards the small
// bounded maps; it is never held during network I/O. The policy starts no
// long-lived goroutines: each ask runs in a goroutine bounded by the ask
// timeout, so a caller whose context ends can return at once while the
// answer is still cached for the next handshake.
type OnDemandPolicy struct {
	match      func(name string) bool
	client     *http.Client
	log        *slog.Logger
	ask        *url.URL // nil: no (usable) ask endpoint; everything is denied
	askErr     error    // why ask is nil when one was configured
	askTimeout time.Duration
	askTTL     time.Duration
	failTTL    time.Duration
	interval   time.Duration

	// now is the clock; tests replace it before first use.
	now func() time.Time

	mu       sync.Mutex
	answers  *expiringMap[askResult]  // name → ask answer, guarded by mu
	attempts *expiringMap[struct{}]   // name → allowed within interval, guarded by mu
	inflight map[string]*askCall      // name → running ask, guarded by mu
	limiter  *rate.Limiter            // global bucket; used under mu with now()
	stats    [statCount]atomic.Uint64 // indexed by stat*
}

// OnDemandStats are cumulative counters of an [OnDemandPolicy], for metrics.
type OnDemandStats struct {
	Rejected    uint64 // invalid names and names of no on_demand site
	Asks        uint64 // requests sent to the ask endpoint
	CacheHits   uint64 // answers served from the ask cache
	AskFailures uint64 // decisions failed by an unreachable ask endpoint
	Denied      uint64 // decisions denied by the ask endpoint
	Allowed     uint64 // decisions that allowed the name
	RateLimited uint64 // issuance attempts refused by spacing or the bucket
	Reserved    uint64 // issuance attempts let through to the CA
}

const (
	statRejected = iota
	statAsks
	statCacheHits
	statAskFailures
	statDenied
	statAllowed
	statRateLimited
	statReserved
	statCount
)

// askResult is one answer of the ask endpoint.
type askResult struct {
	allowed bool
	status  int   // HTTP status when the endpoint answered
	err     error // network failure; nil when the endpoint answered
}

// askCall is an ask in flight; done is closed once res is set.
type askCall struct {
	done chan struct{}
	res  askResult
}

// NewOnDemandPolicy returns a policy for cfg. match reports whether a
// (normalised: lower-case, no trailing dot) name belongs to an on_demand
// site; patterns such as "*" or "*.example.com" are the caller's business.
// A nil match matches nothing. client is used for the ask endpoint; nil
// means a client with a 5s timeout that does not follow redirects. log nil
// discards logs.
//
// Zero or negative durations and RateLimit take the configuration loader's
// defaults (AskTTL 5m, RateLimit 10, RateWindow 1m, NameInterval 1m). An
// empty or unparsable cfg.Ask denies every name: without an ask endpoint
// anyone could make us order certificates.
func NewOnDemandPolicy(cfg config.OnDemand, match func(name string) bool, client *http.Client, log *slog.Logger) *OnDemandPolicy {
	if match == nil {
		match = func(string) bool { return false }
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 16
		client = &http.Client{
			Timeout:   defaultAskTimeout,
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // a redirect is not a 200
			},
		}
	}
	p := &OnDemandPolicy{
		match:      match,
		client:     client,
		log:        log,
		askTimeout: defaultAskTimeout,
		askTTL:     orDefault(cfg.AskTTL.D(), defaultAskTTL),
		interval:   orDefault(cfg.NameInterval.D(), defaultNameInterval),
		now:        time.Now,
		answers:    newExpiringMap[askResult](maxOnDemandEntries),
		attempts:   newExpiringMap[struct{}](maxOnDemandEntries),
		inflight:   make(map[string]*askCall),
	}
	if client.Timeout > 0 {
		p.askTimeout = client.Timeout
	}
	p.failTTL = min(p.askTTL, maxFailTTL)

	limit := cfg.RateLimit
	if limit < 1 {
		limit = defaultRateLimit
	}
	window := orDefault(cfg.RateWindow.D(), defaultRateWindow)
	p.limiter = rate.NewLimiter(rate.Every(window/time.Duration(limit)), limit)

	switch u, err := url.Parse(cfg.Ask); {
	case cfg.Ask == "":
		p.askErr = errors.New("no ask endpoint configured")
	case err != nil:
		p.askErr = errors.New("ask endpoint URL does not parse")
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		p.askErr = errors.New("ask endpoint URL is not absolute http(s)")
	default:
		p.ask = u
	}
	return p
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Eligible normalises name (lower case, no trailing dot) and checks that it
// is a valid DNS name of an on_demand site, without asking anyone. The error
// wraps ErrNotOnDemandName. Safe for concurrent use.
func (p *OnDemandPolicy) Eligible(name string) (string, error) {
	name, reason := normalizeName(name)
	if reason == "" && !p.match(name) {
		reason = "no on_demand site matches"
	}
	if reason != "" {
		p.stats[statRejected].Add(1)
		// The name may be junk: log and return it only once validated.
		if name != "" && len(name) <= maxNameLen {
			p.log.Debug("on-demand TLS denied", "name", name, "reason", reason)
		}
		return "", fmt.Errorf("%w: %s", ErrNotOnDemandName, reason)
	}
	return name, nil
}

// Decide reports whether name may have an on-demand certificate: nil allows
// it; otherwise the error wraps one of ErrNotOnDemandName, ErrAskDenied or
// ErrAskFailed. It checks the name ([OnDemandPolicy.Eligible]) and asks the
// ask endpoint (answers cached for AskTTL, failures briefly). It applies no
// rate limit and records nothing but the ask answer, so it may serve as
// CertMagic's OnDemandConfig.DecisionFunc; issuance limits are
// [OnDemandPolicy.Reserve]'s. Safe for concurrent use.
//
// Decide returns early with ErrAskFailed when ctx ends while it waits for
// the ask endpoint; the ask itself completes (bounded by its timeout) and
// its answer is cached.
func (p *OnDemandPolicy) Decide(ctx context.Context, name string) error {
	name, err := p.Eligible(name)
	if err != nil {
		return err
	}
	if p.ask == nil {
		p.stats[statDenied].Add(1)
		p.log.Debug("on-demand TLS denied", "name", name, "reason", p.askErr.Error())
		return fmt.Errorf("on-demand %q: %w: %w", name, ErrAskDenied, p.askErr)
	}

	res, err := p.answer(ctx, name)
	if err != nil {
		p.stats[statAskFailures].Add(1)
		p.log.Debug("on-demand TLS denied", "name", name, "reason", "gave up waiting for ask endpoint", "error", err)
		return fmt.Errorf("on-demand %q: %w: %w", name, ErrAskFailed, err)
	}
	switch {
	case res.err != nil:
		p.stats[statAskFailures].Add(1)
		p.log.Debug("on-demand TLS denied", "name", name, "reason", "ask endpoint failed", "error", res.err)
		return fmt.Errorf("on-demand %q: %w: %w", name, ErrAskFailed, res.err)
	case !res.allowed:
		p.stats[statDenied].Add(1)
		p.log.Debug("on-demand TLS denied", "name", name, "reason", "ask endpoint denied", "status", res.status)
		return fmt.Errorf("on-demand %q: %w (status %d)", name, ErrAskDenied, res.status)
	}
	p.stats[statAllowed].Add(1)
	p.log.Debug("on-demand TLS allowed", "name", name)
	return nil
}

// Reserve admits one issuance attempt for a certificate covering names (as
// Decide normalises them): nil lets it through to the CA; otherwise the
// error wraps ErrRateLimited and nothing is recorded. All names must be
// past NameInterval since their last admitted attempt, and the global bucket
// must hold one token per name; on success the attempt is recorded for every
// name and the tokens are spent, atomically. It checks neither the names nor
// the ask endpoint: call Decide for that. Safe for concurrent use.
func (p *OnDemandPolicy) Reserve(names ...string) error {
	if len(names) == 0 {
		return fmt.Errorf("%w: no names", ErrRateLimited)
	}
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = strings.ToLower(strings.TrimSuffix(n, "."))
	}
	if reason := p.reserve(keys); reason != "" {
		p.stats[statRateLimited].Add(1)
		p.log.Warn("on-demand TLS issuance rate limited", "names", keys, "reason", reason)
		return fmt.Errorf("on-demand %q: %w: %s", keys, ErrRateLimited, reason)
	}
	p.stats[statReserved].Add(1)
	p.log.Debug("on-demand TLS issuance admitted", "names", keys)
	return nil
}

// reserve applies per-name spacing, then the global bucket, and records the
// attempt when both pass. It returns "" on success, else the reason.
func (p *OnDemandPolicy) reserve(names []string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, name := range names {
		if _, recent := p.attempts.get(name, now); recent {
			return "an issuance attempt for this name was made less than name_interval ago"
		}
	}
	if !p.limiter.AllowN(now, len(names)) {
		return "global rate_limit per rate_window reached"
	}
	for _, name := range names {
		p.attempts.set(name, struct{}{}, now.Add(p.interval), now)
	}
	return ""
}

// answer returns the ask endpoint's answer for name: cached if fresh, else
// from the one ask in flight for name, started if there is none. The error
// is non-nil only when ctx ended first.
func (p *OnDemandPolicy) answer(ctx context.Context, name string) (askResult, error) {
	p.mu.Lock()
	if res, ok := p.answers.get(name, p.now()); ok {
		p.mu.Unlock()
		p.stats[statCacheHits].Add(1)
		return res, nil
	}
	c, ok := p.inflight[name]
	if !ok {
		c = &askCall{done: make(chan struct{})}
		p.inflight[name] = c
		// Detached from ctx so one impatient caller does not fail the
		// others waiting on the same ask; bounded by the ask timeout.
		askCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.askTimeout)
		go func() {
			defer cancel()
			p.finishAsk(name, c, p.doAsk(askCtx, name))
		}()
	}
	p.mu.Unlock()

	select {
	case <-c.done:
		return c.res, nil
	case <-ctx.Done():
		return askResult{}, ctx.Err()
	}
}

// finishAsk caches res and retires the call in one critical section, so no
// Decide can see neither (which would send a second ask), then wakes the
// waiters.
func (p *OnDemandPolicy) finishAsk(name string, c *askCall, res askResult) {
	ttl := p.askTTL
	if res.err != nil {
		ttl = p.failTTL
	}
	p.mu.Lock()
	now := p.now()
	p.answers.set(name, res, now.Add(ttl), now)
	delete(p.inflight, name)
	p.mu.Unlock()
	c.res = res
	close(c.done)
}

// doAsk sends GET <ask>?domain=<name>, keeping any query already in ask.
func (p *OnDemandPolicy) doAsk(ctx context.Context, name string) askResult {
	p.stats[statAsks].Add(1)
	u := *p.ask
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return askResult{err: fmt.Errorf("building ask request: %w", err)}
	}
	req.Header.Set("User-Agent", "Gatehouse on-demand TLS")
	resp, err := p.client.Do(req)
	if err != nil {
		// Drop the URL from the error: the ask URL may carry a secret.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return askResult{err: fmt.Errorf("asking: %w", err)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAskBody))
	_ = resp.Body.Close()
	return askResult{allowed: resp.StatusCode == http.StatusOK, status: resp.StatusCode}
}

// Stats returns a snapshot of the policy's counters. Safe for concurrent use.
func (p *OnDemandPolicy) Stats() OnDemandStats {
	return OnDemandStats{
		Rejected:    p.stats[statRejected].Load(),
		Asks:        p.stats[statAsks].Load(),
		CacheHits:   p.stats[statCacheHits].Load(),
		AskFailures: p.stats[statAskFailures].Load(),
		Denied:      p.stats[statDenied].Load(),
		Allowed:     p.stats[statAllowed].Load(),
		RateLimited: p.stats[statRateLimited].Load(),
		Reserved:    p.stats[statReserved].Load(),
	}
}

const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// normalizeName lower-cases name and strips one trailing dot, then checks
// that it is a DNS host name fit for a certificate: 1..253 characters,
// labels of 1..63 characters from [a-z0-9-] not starting or ending with a
// hyphen, and not an IP address (a numeric last label is refused too, so
// forms like "127.1" never pass). It returns the normalised name and ""
// or the reason it is refused.
func normalizeName(name string) (string, string) {
	if len(name) > maxNameLen+1 { // before any work on junk
		return "", "name too long"
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	switch {
	case name == "":
		return "", "empty name"
	case len(name) > maxNameLen:
		return "", "name too long"
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return "", "IP address"
	}
	numeric := true // of the current label
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return "", "empty label"
		case len(label) > maxLabelLen:
			return "", "label too long"
		case label[0] == '-' || label[len(label)-1] == '-':
			return "", "label starts or ends with a hyphen"
		}
		numeric = true
		for i := 0; i < len(label); i++ {
			switch c := label[i]; {
			case 'a' <= c && c <= 'z', c == '-':
				numeric = false
			case '0' <= c && c <= '9':
			default:
				return "", "invalid character"
			}
		}
	}
	if numeric {
		return "", "numeric top-level label (IP-like)"
	}
	return name, ""
}

// expiringMap is a map bounded to max entries whose entries expire. Entries
// are kept in order of their last set; set evicts expired entries from the
// old end and then the oldest entries while over max. Not safe for
// concurrent use: OnDemandPolicy guards it with its mutex.
type expiringMap[V any] struct {
	max   int
	items map[string]*list.Element // of *expiringEntry[V]
	order *list.List               // front: least recently set
}

type expiringEntry[V any] struct {
	key     string
	val     V
	expires time.Time
}

func newExpiringMap[V any](max int) *expiringMap[V] {
	return &expiringMap[V]{max: max, items: make(map[string]*list.Element), order: list.New()}
}

// get returns the value for key if it has not expired at now; an expired
// entry is removed.
func (m *expiringMap[V]) get(key string, now time.Time) (V, bool) {
	el, ok := m.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	e := el.Value.(*expiringEntry[V])
	if !now.Before(e.expires) {
		m.remove(el)
		var zero V
		return zero, false
	}
	return e.val, true
}

// set stores val for key until expires, then trims the map to max entries.
func (m *expiringMap[V]) set(key string, val V, expires, now time.Time) {
	if el, ok := m.items[key]; ok {
		e := el.Value.(*expiringEntry[V])
		e.val, e.expires = val, expires
		m.order.MoveToBack(el)
	} else {
		m.items[key] = m.order.PushBack(&expiringEntry[V]{key: key, val: val, expires: expires})
	}
	for el := m.order.Front(); el != nil; el = m.order.Front() {
		if e := el.Value.(*expiringEntry[V]); m.order.Len() <= m.max && now.Before(e.expires) {
			break
		}
		m.remove(el)
	}
}

func (m *expiringMap[V]) remove(el *list.Element) {
	delete(m.items, el.Value.(*expiringEntry[V]).key)
	m.order.Remove(el)
}

func (m *expiringMap[V]) len() int { return len(m.items) }
