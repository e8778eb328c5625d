package cache

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

// RFC 9111 §4.2.1 and §4.2.2: freshness lifetime.
func TestFreshnessLifetime(t *testing.T) {
	t.Parallel()
	date := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name     string
		status   int
		hdr      http.Header
		want     time.Duration
		explicit bool
	}{
		{"s-maxage wins over max-age", 200, http.Header{"Cache-Control": {"max-age=10, s-maxage=20"}}, 20 * time.Second, true},
		{"max-age wins over Expires", 200, http.Header{"Cache-Control": {"max-age=10"}, "Expires": {httpDate(date.Add(time.Hour))}}, 10 * time.Second, true},
		{"Expires minus Date", 200, http.Header{"Expires": {httpDate(date.Add(90 * time.Second))}}, 90 * time.Second, true},
		{"Expires in the past", 200, http.Header{"Expires": {httpDate(date.Add(-time.Hour))}}, 0, true},
		{"invalid Expires is expired", 200, http.Header{"Expires": {"0"}}, 0, true},
		{"invalid max-age is stale", 200, http.Header{"Cache-Control": {"max-age=ten"}, "Expires": {httpDate(date.Add(time.Hour))}}, 0, true},
		{"heuristic 10% of age", 200, http.Header{"Last-Modified": {httpDate(date.Add(-100 * time.Hour))}}, 10 * time.Hour, false},
		{"heuristic capped at a day", 200, http.Header{"Last-Modified": {httpDate(date.Add(-30 * 24 * time.Hour))}}, 24 * time.Hour, false},
		{"heuristic for 404", 404, http.Header{"Last-Modified": {httpDate(date.Add(-10 * time.Hour))}}, time.Hour, false},
		{"no heuristic for 302", 302, http.Header{"Last-Modified": {httpDate(date.Add(-10 * time.Hour))}}, 0, false},
		{"public allows heuristic for 302", 302, http.Header{"Cache-Control": {"public"}, "Last-Modified": {httpDate(date.Add(-10 * time.Hour))}}, time.Hour, false},
		{"Last-Modified after Date", 200, http.Header{"Last-Modified": {httpDate(date.Add(time.Hour))}}, 0, false},
		{"nothing", 200, http.Header{}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := parseDirectives(tc.hdr["Cache-Control"])
			got, explicit := freshnessLifetime(&cc, tc.hdr, tc.status, date)
			if got != tc.want || explicit != tc.explicit {
				t.Fatalf("lifetime = %v (explicit %v), want %v (explicit %v)", got, explicit, tc.want, tc.explicit)
			}
		})
	}
}

// RFC 9111 §4.2.3: corrected_initial_age.
func TestCorrectedInitialAge(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name                    string
		date, reqTime, respTime time.Time
		ageValue, wantInitial   time.Duration
	}{
		{"apparent age dominates", t0.Add(-10 * time.Second), t0, t0.Add(2 * time.Second), 5 * time.Second, 12 * time.Second},
		{"Age plus response delay dominates", t0, t0, t0.Add(2 * time.Second), 30 * time.Second, 32 * time.Second},
		{"Date in the future clamps apparent age to 0", t0.Add(time.Hour), t0, t0, 0, 0},
		{"no delay, no Age", t0, t0, t0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := correctedInitialAge(tc.date, tc.reqTime, tc.respTime, tc.ageValue)
			if got != tc.wantInitial {
				t.Fatalf("corrected_initial_age = %v, want %v", got, tc.wantInitial)
			}
		})
	}
}

// RFC 9111 §4.2.3 end to end: the Age header a client sees.
func TestAgeHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		dateOffset time.Duration // origin's Date relative to the request
		age        string        // origin's Age header
		delay      time.Duration // response_delay (clock moved while the origin answers)
		resident   time.Duration
		wantAge    int
	}{
		{"apparent age", -10 * time.Second, "5", 2 * time.Second, 3 * time.Second, 15},
		{"corrected age value", 0, "30", 2 * time.Second, 3 * time.Second, 35},
		{"fresh from origin", 0, "", 0, 7 * time.Second, 7},
		{"invalid Age ignored", 0, "abc", 0, time.Second, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var env *testEnv
			env = newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				now := env.clock.Now()
				w.Header().Set("Date", httpDate(now.Add(tc.dateOffset)))
				if tc.age != "" {
					w.Header().Set("Age", tc.age)
				}
				w.Header().Set("Cache-Control", "max-age=100")
				env.clock.Advance(tc.delay)
				_, _ = w.Write([]byte("x"))
			})
			first := env.get("/age")
			expectStatus(t, first, "gatehouse; fwd=uri-miss; stored")
			env.waitIdle()
			env.clock.Advance(tc.resident)
			r := env.get("/age")
			if got := r.header.Get("Age"); got != strconv.Itoa(tc.wantAge) {
				t.Fatalf("Age = %q, want %d", got, tc.wantAge)
			}
			expectStatus(t, r, "gatehouse; hit; ttl="+strconv.Itoa(100-tc.wantAge))
			if r.header.Get("Date") == "" {
				t.Fatal("Date not kept")
			}
		})
	}
}

// RFC 9111 §4.2.2: heuristic freshness end to end.
func TestHeuristicFreshness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		lastMod   time.Duration // before Date
		wantTTL   time.Duration // 0: not stored
		staleAt   time.Duration
		wantHits2 int64
	}{
		{"10 percent", 200, 100 * time.Hour, 10 * time.Hour, 10*time.Hour + time.Second, 1},
		{"capped", 200, 40 * 24 * time.Hour, 24 * time.Hour, 24*time.Hour + time.Second, 1},
		{"404 is heuristically cacheable", 404, 10 * time.Hour, time.Hour, time.Hour + time.Second, 1},
		{"302 is not", 302, 10 * time.Hour, 0, 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var env *testEnv
			env = newEnv(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Last-Modified", httpDate(env.clock.Now().Add(-tc.lastMod)))
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
			})
			env.get("/h")
			env.waitIdle()
			r := env.get("/h")
			if env.hits.Load() != tc.wantHits2 {
				t.Fatalf("origin hits = %d, want %d", env.hits.Load(), tc.wantHits2)
			}
			if tc.wantTTL == 0 {
				return
			}
			expectStatus(t, r, "gatehouse; hit; ttl="+strconv.Itoa(int(tc.wantTTL/time.Second)))
			env.clock.Advance(tc.staleAt)
			r = env.get("/h")
			expectPrefix(t, r, "gatehouse; fwd=stale")
		})
	}
}

// RFC 9111 §4.2.4, §5.2 and RFC 5861: what may be done with a stored response.
func TestJudge(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		respCC string
		reqCC  string
		age    time.Duration
		want   verdict
	}{
		{"fresh", "max-age=60", "", 10 * time.Second, useFresh},
		{"exactly expired is stale", "max-age=60", "", 60 * time.Second, forwardStale},
		{"swr window", "max-age=60, stale-while-revalidate=30", "", 80 * time.Second, useStaleRevalidate},
		{"swr window passed", "max-age=60, stale-while-revalidate=30", "", 100 * time.Second, forwardStale},
		{"swr with must-revalidate", "max-age=60, stale-while-revalidate=30, must-revalidate", "", 80 * time.Second, forwardStale},
		{"swr with proxy-revalidate", "max-age=60, stale-while-revalidate=30, proxy-revalidate", "", 80 * time.Second, forwardStale},
		{"swr with s-maxage", "s-maxage=60, stale-while-revalidate=30", "", 80 * time.Second, forwardStale},
		{"swr but client no-cache", "max-age=60, stale-while-revalidate=30", "no-cache", 80 * time.Second, forwardStale},
		{"max-stale beats swr", "max-age=60, stale-while-revalidate=30", "max-stale", 80 * time.Second, useStale},
		{"fresh but client no-cache", "max-age=60", "no-cache", 10 * time.Second, forwardRequest},
		{"fresh but client max-age=0", "max-age=60", "max-age=0", 10 * time.Second, forwardRequest},
		{"response no-cache", "no-cache, max-age=60", "", 0, forwardStale},
		{"response no-cache beats max-stale", "no-cache, max-age=60", "max-stale", 0, forwardStale},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := &entry{
				cc:           parseDirectives([]string{tc.respCC}),
				responseTime: t0,
			}
			e.lifetime, _ = freshnessLifetime(&e.cc, http.Header{}, 200, t0)
			ri := &requestInfo{}
			if tc.reqCC != "" {
				ri.cc = parseDirectives([]string{tc.reqCC})
				ri.noCache = ri.cc.has(ccNoCache)
			}
			if got, _ := judge(e, ri, t0.Add(tc.age)); got != tc.want {
				t.Fatalf("verdict = %d, want %d", got, tc.want)
			}
		})
	}
}
