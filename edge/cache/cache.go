package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// ErrInvalidOptions is returned by New for options it cannot work with.
var ErrInvalidOptions = errors.New("invalid cache options")

const (
	defaultCollapseWait = 10 * time.Second
	maxDefaultObject    = 64 << 20
	maxDefaultBuffering = 512 << 20
	// defaultStaleRetention is how long an entry stays in the store after it
	// turns stale, so that it can be revalidated with a conditional request or
	// served under a request's max-stale. stale-while-revalidate and
	// stale-if-error windows longer than this extend it for that entry.
	defaultStaleRetention = time.Hour
	// maxBackground bounds concurrent stale-while-revalidate refreshes; when
	// all slots are busy a stale hit is still served, without a refresh.
	maxBackground = 64
	// backgroundTimeout bounds one background revalidation.
	backgroundTimeout = 2 * time.Minute
)

// Options configures a Cache. Zero values get the defaults stated per field.
type Options struct {
	// MaxSize bounds, in bytes, the bodies, headers and keys held. Required > 0.
	MaxSize int64
	// MaxObjectSize is the largest body stored; larger responses stream
	// through without being stored. 0 means MaxSize/8, capped at 64 MiB.
	// A value above MaxSize is lowered to MaxSize.
	MaxObjectSize int64
	// MaxBuffering bounds, in bytes, the bodies of responses being received
	// for storing, across all requests in flight. A response that would go
	// beyond it streams through without being stored. 0 means MaxSize/4,
	// capped at 512 MiB. A value below MaxObjectSize keeps responses larger
	// than it from ever being stored.
	MaxBuffering int64
	// CollapseWait bounds how long a request waits for a concurrent request
	// of the same URL to fetch the response it could share. 0 means 10s.
	CollapseWait time.Duration
	// Logger receives background revalidation failures. nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock for freshness, Age and expiry. nil means time.Now.
	Now func() time.Time
}

// Stats is a snapshot of a Cache's counters. Counters are cumulative since New.
type Stats struct {
	Hits        uint64 // responses served from the store without forwarding (fresh, max-stale, stale-while-revalidate, collapsed)
	Misses      uint64 // GET/HEAD requests forwarded in the foreground (miss, stale, client no-cache, bypass)
	StaleServed uint64 // stale responses served (max-stale, stale-while-revalidate, stale-if-error)
	Stored      uint64 // responses written to the store (new or replacing)
	Revalidated uint64 // stored responses freshened by a 304
	Collapsed   uint64 // requests served from the response another request fetched
	Entries     int64  // stored responses (every Vary variant counts)
	Bytes       int64  // weight held: bodies, headers, keys and a fixed overhead per response
	Buffering   int64  // bytes of response bodies being received for storing now (a gauge)
}

// Cache is an RFC 9111 shared HTTP cache used as middleware. It is safe for
// concurrent use by all the handlers it wraps, and outlives any one of them.
type Cache struct {
	store          *store
	now            func() time.Time
	log            *slog.Logger
	maxObject      int64
	maxBuffering   int64
	collapseWait   time.Duration
	staleRetention time.Duration
	flights        flightGroup
	pass           passList // keys whose responses were lately not storable
	buffering      atomic.Int64

	// Background revalidations: bgCtx is cancelled by Close; bgWG counts the
	// goroutines; bgMu orders bgWG.Add against Close's Wait.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgMu     sync.Mutex
	bgClosed bool
	bgWG     sync.WaitGroup
	bgSem    *semaphore.Weighted
	closed   sync.Once

	hits, misses, staleServed, stored, revalidated, collapsed atomic.Uint64

	// testHookWaiting, when set, is called when a request starts waiting for
	// a collapsed forward.
	testHookWaiting func(key string)
}

// New returns a Cache configured by opts.
func New(opts Options) (*Cache, error) {
	if opts.MaxSize <= 0 {
		return nil, fmt.Errorf("%w: MaxSize must be > 0, got %d", ErrInvalidOptions, opts.MaxSize)
	}
	if opts.MaxObjectSize < 0 {
		return nil, fmt.Errorf("%w: MaxObjectSize must be >= 0, got %d", ErrInvalidOptions, opts.MaxObjectSize)
	}
	if opts.MaxBuffering < 0 {
		return nil, fmt.Errorf("%w: MaxBuffering must be >= 0, got %d", ErrInvalidOptions, opts.MaxBuffering)
	}
	if opts.CollapseWait < 0 {
		return nil, fmt.Errorf("%w: CollapseWait must be >= 0, got %s", ErrInvalidOptions, opts.CollapseWait)
	}
	c := &Cache{
		now:            opts.Now,
		log:            opts.Logger,
		maxObject:      opts.MaxObjectSize,
		maxBuffering:   opts.MaxBuffering,
		collapseWait:   opts.CollapseWait,
		staleRetention: defaultStaleRetention,
		bgSem:          semaphore.NewWeighted(maxBackground),
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.maxObject == 0 {
		c.maxObject = min(opts.MaxSize/8, maxDefaultObject)
	}
	c.maxObject = min(c.maxObject, opts.MaxSize)
	if c.maxBuffering == 0 {
		c.maxBuffering = min(opts.MaxSize/4, maxDefaultBuffering)
	}
	if c.collapseWait == 0 {
		c.collapseWait = defaultCollapseWait
	}
	s, err := newStore(opts.MaxSize, c.now, opts.Now != nil)
	if err != nil {
		return nil, fmt.Errorf("creating store: %w", err)
	}
	c.store = s
	c.bgCtx, c.bgCancel = context.WithCancel(context.Background())
	return c, nil
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Hits:        c.hits.Load(),
		Misses:      c.misses.Load(),
		StaleServed: c.staleServed.Load(),
		Stored:      c.stored.Load(),
		Revalidated: c.revalidated.Load(),
		Collapsed:   c.collapsed.Load(),
		Entries:     c.store.entries.Load(),
		Bytes:       int64(c.store.o.WeightedSize()),
		Buffering:   c.buffering.Load(),
	}
}

// Close cancels background revalidations, waits for them to return and stops
// the store's clean-up goroutine. The Cache keeps serving requests afterwards,
// without background revalidation. Close is idempotent.
func (c *Cache) Close() {
	c.closed.Do(func() {
		c.bgMu.Lock()
		c.bgClosed = true
		c.bgMu.Unlock()
		c.bgCancel()
		c.bgWG.Wait()
		c.store.o.StopAllGoroutines()
	})
}

// PurgeURL removes every stored variant of rawURL ("https://example.com/a?b")
// and returns how many responses were removed. rawURL is canonicalised as
// keys are (see the package documentation), so "http://Example.com:80/café"
// reaches what a request for "/caf%c3%a9" to example.com stored.
func (c *Cache) PurgeURL(rawURL string) int {
	key, ok := keyFromURL(rawURL)
	if !ok {
		return 0
	}
	return c.store.remove(key)
}

// PurgePrefix removes every stored response whose key starts with prefix
// ("https://example.com/static/") and returns how many were removed. The
// prefix is canonicalised as keys are (a host that the prefix ends inside is
// only lower-cased); an empty prefix removes everything. It scans the whole
// store.
func (c *Cache) PurgePrefix(prefix string) int {
	return c.store.removePrefix(normalisePrefix(prefix))
}
