package cache

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// RFC 9110 §14: single byte ranges are served from a stored full response.
func TestRangeFromStoredResponse(t *testing.T) {
	t.Parallel()
	lastMod := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("ETag", `"r1"`)
		w.Header().Set("Last-Modified", httpDate(lastMod))
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("0123456789"))
	})
	env.get("/r")
	env.waitIdle()
	tests := []struct {
		name         string
		hdr          []string
		wantCode     int
		wantBody     string
		contentRange string
	}{
		{"first bytes", []string{"Range", "bytes=0-3"}, 206, "0123", "bytes 0-3/10"},
		{"open end", []string{"Range", "bytes=5-"}, 206, "56789", "bytes 5-9/10"},
		{"suffix", []string{"Range", "bytes=-3"}, 206, "789", "bytes 7-9/10"},
		{"suffix longer than body", []string{"Range", "bytes=-30"}, 206, "0123456789", "bytes 0-9/10"},
		{"last beyond end", []string{"Range", "bytes=8-100"}, 206, "89", "bytes 8-9/10"},
		{"unit is case-insensitive", []string{"Range", "Bytes=1-1"}, 206, "1", "bytes 1-1/10"},
		{"unsatisfiable", []string{"Range", "bytes=20-"}, 416, "", "bytes */10"},
		{"multiple ranges get the full response", []string{"Range", "bytes=0-1,3-4"}, 200, "0123456789", ""},
		{"invalid range is ignored", []string{"Range", "bytes=abc"}, 200, "0123456789", ""},
		{"reversed range is ignored", []string{"Range", "bytes=5-2"}, 200, "0123456789", ""},
		{"other unit is ignored", []string{"Range", "items=0-1"}, 200, "0123456789", ""},
		{"If-Range matching ETag", []string{"Range", "bytes=0-1", "If-Range", `"r1"`}, 206, "01", "bytes 0-1/10"},
		{"If-Range other ETag", []string{"Range", "bytes=0-1", "If-Range", `"r0"`}, 200, "0123456789", ""},
		{"If-Range weak never matches", []string{"Range", "bytes=0-1", "If-Range", `W/"r1"`}, 200, "0123456789", ""},
		{"If-Range date", []string{"Range", "bytes=0-1", "If-Range", httpDate(lastMod)}, 206, "01", "bytes 0-1/10"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := env.get("/r", tc.hdr...)
			if r.status != tc.wantCode || r.body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.wantCode, tc.wantBody)
			}
			if got := r.header.Get("Content-Range"); got != tc.contentRange {
				t.Fatalf("Content-Range = %q, want %q", got, tc.contentRange)
			}
			expectStatus(t, r, "gatehouse; hit; ttl=60")
		})
	}
	if env.hits.Load() != 1 {
		t.Fatalf("origin hits = %d, want 1", env.hits.Load())
	}
}

// A Range request that misses goes upstream unchanged; the 206 is not stored.
func TestRangeMissPassesThrough(t *testing.T) {
	t.Parallel()
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		http.ServeContent(w, r, "f.txt", time.Time{}, strings.NewReader("0123456789"))
	})
	r := env.get("/f", "Range", "bytes=2-4")
	if r.status != 206 || r.body != "234" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	expectStatus(t, r, "gatehouse; fwd=uri-miss")
	env.waitIdle()
	if s := env.cache.Stats(); s.Stored != 0 {
		t.Fatalf("stats %+v", s)
	}
	expectStatus(t, env.get("/f"), "gatehouse; fwd=uri-miss; stored")
	if env.hits.Load() != 2 {
		t.Fatalf("origin hits = %d", env.hits.Load())
	}
}

// HEAD is answered from a stored GET; a HEAD miss is forwarded as HEAD and
// not stored.
func TestHead(t *testing.T) {
	t.Parallel()
	methods := make(chan string, 10)
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		methods <- r.Method
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("payload"))
	})
	r, err := env.do(http.MethodHead, "/h")
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, "gatehouse; fwd=uri-miss")
	if m := <-methods; m != http.MethodHead {
		t.Fatalf("origin saw %s", m)
	}
	env.waitIdle()
	if s := env.cache.Stats(); s.Stored != 0 {
		t.Fatalf("HEAD stored: %+v", s)
	}
	env.get("/h")
	env.waitIdle()
	r, err = env.do(http.MethodHead, "/h")
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, "gatehouse; hit; ttl=60")
	if r.body != "" || r.header.Get("Content-Length") != "7" {
		t.Fatalf("HEAD hit body %q, Content-Length %q", r.body, r.header.Get("Content-Length"))
	}
	if env.hits.Load() != 2 {
		t.Fatalf("origin hits = %d, want 2", env.hits.Load())
	}
}

// RFC 9110 §13.1.2: "If-None-Match: *" matches any current representation,
// also a stored response without an ETag; no entity-tag matches one.
func TestIfNoneMatchWithoutETag(t *testing.T) {
	t.Parallel()
	lastMod := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		hdr      []string
		wantCode int
	}{
		{"star", []string{"If-None-Match", "*"}, http.StatusNotModified},
		{"star in a list", []string{"If-None-Match", ` ,*`}, http.StatusNotModified},
		{"entity-tag", []string{"If-None-Match", `"v1"`}, http.StatusOK},
		{"entity-tag wins over a matching date", []string{"If-None-Match", `"v1"`, "If-Modified-Since", httpDate(lastMod)}, http.StatusOK},
		{"date", []string{"If-Modified-Since", httpDate(lastMod)}, http.StatusNotModified},
	}
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Last-Modified", httpDate(lastMod))
		_, _ = w.Write([]byte("no etag"))
	})
	env.get("/n")
	env.waitIdle()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := env.get("/n", tc.hdr...)
			if r.status != tc.wantCode {
				t.Fatalf("status = %d, want %d", r.status, tc.wantCode)
			}
			expectStatus(t, r, "gatehouse; hit; ttl=60")
		})
	}
	if env.hits.Load() != 1 {
		t.Fatalf("origin hits = %d, want 1", env.hits.Load())
	}
}

func TestETagListMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		list   []string
		etag   string
		strong bool
		want   bool
	}{
		{[]string{"*"}, "", false, true},
		{[]string{"*"}, `"a"`, true, true},
		{[]string{`"a"`}, "", false, false},
		{[]string{`W/"a"`}, `"a"`, false, true},
		{[]string{`W/"a"`}, `"a"`, true, false},
		{[]string{`"b", "a"`}, `"a"`, true, true},
		{[]string{`bogus, "a"`}, `"a"`, false, false},
		{nil, "", false, false},
	}
	for _, tc := range tests {
		if got := etagListMatch(tc.list, tc.etag, tc.strong); got != tc.want {
			t.Errorf("etagListMatch(%q, %q, %v) = %v, want %v", tc.list, tc.etag, tc.strong, got, tc.want)
		}
	}
}
