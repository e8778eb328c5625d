package cache

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// bodyHandler answers every GET with size bytes, max-age=60.
func bodyHandler(size int) http.Handler {
	body := bytes.Repeat([]byte("z"), size)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write(body)
	})
}

// countVariants walks the store: the ground truth for Stats().Entries.
func countVariants(c *Cache) int64 {
	var n int64
	for u := range c.store.o.Values() {
		n += int64(len(u.variants))
	}
	return n
}

// The store stays within MaxSize however much is inserted.
func TestEvictionUnderMemoryBound(t *testing.T) {
	t.Parallel()
	const maxSize = 64 << 10
	c := newTestCache(t, newFakeClock(), func(o *Options) { o.MaxSize = maxSize })
	next := bodyHandler(4 << 10)
	for i := range 300 { // ~1.2 MiB into 64 KiB
		rec := direct(c, next, http.MethodGet, fmt.Sprintf("http://example.com/obj/%d", i))
		if rec.Code != 200 || rec.Body.Len() != 4<<10 {
			t.Fatalf("response %d: %d, %d bytes", i, rec.Code, rec.Body.Len())
		}
	}
	c.store.o.CleanUp()
	s := c.Stats()
	if s.Stored != 300 {
		t.Fatalf("Stored = %d, want 300", s.Stored)
	}
	if s.Bytes > maxSize || s.Bytes == 0 {
		t.Fatalf("Bytes = %d, want (0, %d]", s.Bytes, maxSize)
	}
	if s.Entries <= 0 || s.Entries >= 300 {
		t.Fatalf("Entries = %d, want some evicted", s.Entries)
	}
	if got := countVariants(c); got != s.Entries {
		t.Fatalf("Entries = %d, store holds %d", s.Entries, got)
	}
}

// Entries stays exact through replacement, variants, purges and expiry;
// an entry leaves the store once its stale retention has passed.
func TestEntriesAccountingAndRetention(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newTestCache(t, clock)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=10")
		w.Header().Set("Vary", "Accept-Language")
		w.Header().Set("Date", httpDate(clock.Now()))
		_, _ = w.Write([]byte("x"))
	})
	check := func(step string, want int64) {
		t.Helper()
		c.store.o.CleanUp()
		if got, truth := c.Stats().Entries, countVariants(c); got != want || truth != want {
			t.Fatalf("%s: Entries = %d, store holds %d, want %d", step, got, truth, want)
		}
	}
	direct(c, next, "GET", "http://example.com/a", "Accept-Language", "en")
	direct(c, next, "GET", "http://example.com/a", "Accept-Language", "de")
	direct(c, next, "GET", "http://example.com/b")
	check("three stored", 3)
	clock.Advance(20 * time.Second)
	direct(c, next, "GET", "http://example.com/a", "Accept-Language", "en") // stale: replaced
	check("replaced", 3)
	if n := c.PurgeURL("http://EXAMPLE.com/a"); n != 2 {
		t.Fatalf("PurgeURL = %d, want 2", n)
	}
	check("purged", 1)
	clock.Advance(defaultStaleRetention)
	check("expired after retention", 0)
	if s := c.Stats(); s.Bytes != 0 {
		t.Fatalf("Bytes = %d after expiry", s.Bytes)
	}
	// Replacing an entry that expired but was not cleaned up yet.
	direct(c, next, "GET", "http://example.com/c")
	clock.Advance(defaultStaleRetention + time.Minute)
	direct(c, next, "GET", "http://example.com/c")
	check("expired entry replaced", 1)
}

func TestPurge(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, newFakeClock())
	next := bodyHandler(10)
	for _, u := range []string{
		"http://example.com/static/a.css",
		"http://example.com/static/b.js",
		"http://example.com/static/c.js?v=2",
		"http://example.com/other",
		"http://other.example/static/a.css",
		"https://example.com/static/a.css",
	} {
		direct(c, next, http.MethodGet, u)
	}
	tests := []struct {
		name string
		op   func() int
		want int
	}{
		{"unknown URL", func() int { return c.PurgeURL("http://example.com/nope") }, 0},
		{"not a URL", func() int { return c.PurgeURL("::") }, 0},
		{"query is part of the key", func() int { return c.PurgeURL("http://example.com/static/c.js") }, 0},
		{"exact URL with query", func() int { return c.PurgeURL("http://example.com/static/c.js?v=2") }, 1},
		{"prefix, case-insensitive host", func() int { return c.PurgePrefix("HTTP://Example.COM/static/") }, 2},
		{"prefix again", func() int { return c.PurgePrefix("http://example.com/static/") }, 0},
		{"scheme is part of the key", func() int { return c.PurgeURL("https://example.com/static/a.css") }, 1},
	}
	for _, tc := range tests {
		if got := tc.op(); got != tc.want {
			t.Fatalf("%s: removed %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := c.Stats().Entries; got != 2 {
		t.Fatalf("Entries = %d, want 2 left", got)
	}
}

func TestNewOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
		maxObj  int64
	}{
		{"zero size", Options{}, true, 0},
		{"negative object", Options{MaxSize: 1 << 20, MaxObjectSize: -1}, true, 0},
		{"negative wait", Options{MaxSize: 1 << 20, CollapseWait: -time.Second}, true, 0},
		{"default object size", Options{MaxSize: 1 << 20}, false, 128 << 10},
		{"default capped at 64 MiB", Options{MaxSize: 1 << 40}, false, 64 << 20},
		{"object above size lowered", Options{MaxSize: 1 << 20, MaxObjectSize: 2 << 20}, false, 1 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.opts)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidOptions) {
					t.Fatalf("err = %v, want ErrInvalidOptions", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.maxObject != tc.maxObj || c.collapseWait != defaultCollapseWait {
				t.Fatalf("maxObject %d collapseWait %v", c.maxObject, c.collapseWait)
			}
		})
	}
}
