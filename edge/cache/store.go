package cache

import (
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// maxVariants bounds the Vary variants kept per URL; the oldest goes first.
const maxVariants = 16

// urlEntry is the value stored under one URL key: the variants of that URL.
// It is immutable once published; every change publishes a new urlEntry
// through otter's Compute, which serialises writers of one key.
type urlEntry struct {
	variants    []*entry
	retainUntil time.Time
	weight      uint32
}

// selectVariant returns the most recent stored response that the request
// selects (RFC 9111 §4.1), or nil.
func (u *urlEntry) selectVariant(req *http.Request, now time.Time) *entry {
	var best *entry
	for _, v := range u.variants {
		if now.After(v.retainUntil) || !v.matches(req) {
			continue
		}
		if best == nil || v.responseTime.After(best.responseTime) {
			best = v
		}
	}
	return best
}

// store is the memory-bounded map from URL key to variants, on otter's
// W-TinyLFU with weights in bytes. Every urlEntry expires (in otter's clock,
// which is the Cache's clock) at the latest retainUntil of its variants.
type store struct {
	o   *otter.Cache[string, *urlEntry]
	now func() time.Time
	// entries counts stored variants: Compute adds the new urlEntry's count
	// and OnAtomicDeletion (replacement, invalidation, eviction, expiry)
	// subtracts the old one's.
	entries atomic.Int64
}

// otterClock lets otter expire entries on the Cache's (possibly fake) clock.
// Tick returns nil: otter then runs no periodic clean-up goroutine, and
// expired entries are removed during the maintenance that reads and writes do.
type otterClock struct{ now func() time.Time }

func (c otterClock) NowNano() int64                    { return c.now().UnixNano() }
func (otterClock) Tick(time.Duration) <-chan time.Time { return nil }

func newStore(maxWeight int64, now func() time.Time, customClock bool) (*store, error) {
	s := &store{now: now}
	opts := &otter.Options[string, *urlEntry]{
		MaximumWeight: uint64(maxWeight),
		Weigher: func(_ string, u *urlEntry) uint32 {
			return u.weight
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *urlEntry]) time.Duration {
			return e.Value.retainUntil.Sub(now())
		}),
		OnAtomicDeletion: func(e otter.DeletionEvent[string, *urlEntry]) {
			s.entries.Add(-int64(len(e.Value.variants)))
		},
	}
	if customClock {
		opts.Clock = otterClock{now: now}
	}
	o, err := otter.New(opts)
	if err != nil {
		return nil, err
	}
	s.o = o
	return s, nil
}

func (s *store) get(key string) (*urlEntry, bool) {
	return s.o.GetIfPresent(key)
}

// newURLEntry computes the aggregate fields of a set of variants.
func newURLEntry(key string, variants []*entry) *urlEntry {
	u := &urlEntry{variants: variants}
	w := int64(len(key))
	for _, v := range variants {
		w += v.weight
		if v.retainUntil.After(u.retainUntil) {
			u.retainUntil = v.retainUntil
		}
	}
	if w > math.MaxUint32 {
		w = math.MaxUint32
	}
	u.weight = uint32(w)
	return u
}

// put stores e for key. Variants that req would have selected are superseded
// by e, as is replace (the entry e revalidated), and useless ones are dropped.
func (s *store) put(key string, e *entry, req *http.Request, replace *entry) {
	s.o.Compute(key, func(old *urlEntry, found bool) (*urlEntry, otter.ComputeOp) {
		now := s.now()
		var vs []*entry
		if found {
			vs = make([]*entry, 0, len(old.variants)+1)
			for _, v := range old.variants {
				if v == replace || now.After(v.retainUntil) || v.matches(req) {
					continue
				}
				vs = append(vs, v)
			}
			if len(vs) >= maxVariants {
				vs = vs[len(vs)-maxVariants+1:]
			}
		}
		vs = append(vs, e)
		s.entries.Add(int64(len(vs)))
		return newURLEntry(key, vs), otter.WriteOp
	})
}

// removeVariant drops one stored response of key, if it is still there.
func (s *store) removeVariant(key string, e *entry) {
	s.o.ComputeIfPresent(key, func(old *urlEntry) (*urlEntry, otter.ComputeOp) {
		vs := make([]*entry, 0, len(old.variants))
		for _, v := range old.variants {
			if v != e {
				vs = append(vs, v)
			}
		}
		if len(vs) == len(old.variants) {
			return old, otter.CancelOp
		}
		if len(vs) == 0 {
			return nil, otter.InvalidateOp
		}
		s.entries.Add(int64(len(vs)))
		return newURLEntry(key, vs), otter.WriteOp
	})
}

// remove drops every variant of key and returns how many there were.
func (s *store) remove(key string) int {
	if u, ok := s.o.Invalidate(key); ok {
		return len(u.variants)
	}
	return 0
}

// removePrefix drops every URL whose key starts with prefix.
func (s *store) removePrefix(prefix string) int {
	var keys []string
	for k := range s.o.Keys() {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	n := 0
	for _, k := range keys {
		n += s.remove(k)
	}
	return n
}
