package metrics

import (
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/upstream"
)

// scrape fetches m's exposition over a real HTTP server and parses it.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("scraping: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type = %q, want the text exposition format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing exposition: %v", err)
	}
	return fams
}

func family(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType) *dto.MetricFamily {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("metric %s missing; have %v", name, slices.Sorted(maps.Keys(fams)))
	}
	if f.GetType() != typ {
		t.Fatalf("metric %s has type %v, want %v", name, f.GetType(), typ)
	}
	return f
}

// labelKey renders a metric's labels as "a=x,b=y" in name order.
func labelKey(m *dto.Metric) string {
	var parts []string
	for _, lp := range m.GetLabel() {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// values maps each series of a counter or gauge family to its value.
func values(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		switch {
		case m.Counter != nil:
			out[labelKey(m)] = m.GetCounter().GetValue()
		case m.Gauge != nil:
			out[labelKey(m)] = m.GetGauge().GetValue()
		case m.Untyped != nil:
			out[labelKey(m)] = m.GetUntyped().GetValue()
		}
	}
	return out
}

func wantValues(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]float64) {
	t.Helper()
	got := values(family(t, fams, name, typ))
	if !maps.Equal(got, want) {
		t.Errorf("%s:\n got  %v\n want %v", name, got, want)
	}
}

func TestRequests(t *testing.T) {
	t.Parallel()
	m := New(Sources{})
	m.ObserveRequest("shop", "api", "h2", 200, 3*time.Millisecond)
	m.ObserveRequest("shop", "api", "h2", 204, 20*time.Millisecond)
	m.ObserveRequest("shop", "api", "h2", 503, 2*time.Second)
	m.ObserveRequest("shop", "api", "h1", 404, 500*time.Microsecond)
	m.ObserveRequest("shop", "static", "h3", 304, 40*time.Second) // above the last bucket
	m.ObserveRequest("blog", "", "h1", 101, 0)
	m.ObserveRequest("blog", "", "h1", 0, 0)   // nothing written: 200
	m.ObserveRequest("blog", "", "h1", 799, 0) // net/http allows 600–999

	fams := scrape(t, m)
	wantValues(t, fams, "gatehouse_http_requests_total", dto.MetricType_COUNTER, map[string]float64{
		"code=2xx,proto=h2,route=api,site=shop":    2,
		"code=5xx,proto=h2,route=api,site=shop":    1,
		"code=4xx,proto=h1,route=api,site=shop":    1,
		"code=3xx,proto=h3,route=static,site=shop": 1,
		"code=1xx,proto=h1,route=,site=blog":       1,
		"code=2xx,proto=h1,route=,site=blog":       1,
		"code=other,proto=h1,route=,site=blog":     1,
	})

	type hist struct {
		count   uint64
		sum     float64
		buckets map[float64]uint64 // upper bound → cumulative count, for the bounds listed
	}
	want := map[string]hist{
		"proto=h2,route=api,site=shop": {3, 2.023, map[float64]uint64{
			.001: 0, .005: 1, .025: 2, 1: 2, 2.5: 3, 30: 3}},
		"proto=h1,route=api,site=shop":    {1, .0005, map[float64]uint64{.001: 1, 30: 1}},
		"proto=h3,route=static,site=shop": {1, 40, map[float64]uint64{30: 0}},
		"proto=h1,route=,site=blog":       {3, 0, map[float64]uint64{.001: 3}},
	}
	f := family(t, fams, "gatehouse_http_request_duration_seconds", dto.MetricType_HISTOGRAM)
	if len(f.GetMetric()) != len(want) {
		t.Errorf("duration histogram has %d series, want %d", len(f.GetMetric()), len(want))
	}
	for _, s := range f.GetMetric() {
		key := labelKey(s)
		w, ok := want[key]
		if !ok {
			t.Errorf("unexpected duration series {%s}", key)
			continue
		}
		h := s.GetHistogram()
		if h.GetSampleCount() != w.count {
			t.Errorf("{%s} count = %d, want %d", key, h.GetSampleCount(), w.count)
		}
		if math.Abs(h.GetSampleSum()-w.sum) > 1e-9 {
			t.Errorf("{%s} sum = %v, want %v", key, h.GetSampleSum(), w.sum)
		}
		// The parsed exposition carries the implicit +Inf bucket too.
		bs := h.GetBucket()
		if len(bs) != len(DurationBuckets)+1 {
			t.Fatalf("{%s} has %d buckets, want %d and +Inf", key, len(bs), len(DurationBuckets))
		}
		for i, ub := range DurationBuckets {
			if bs[i].GetUpperBound() != ub {
				t.Errorf("{%s} bucket %d le=%v, want %v", key, i, bs[i].GetUpperBound(), ub)
			}
		}
		if inf := bs[len(bs)-1]; !math.IsInf(inf.GetUpperBound(), 1) || inf.GetCumulativeCount() != w.count {
			t.Errorf("{%s} last bucket le=%v count %d, want +Inf with %d", key, inf.GetUpperBound(), inf.GetCumulativeCount(), w.count)
		}
		for _, b := range bs {
			if n, ok := w.buckets[b.GetUpperBound()]; ok && b.GetCumulativeCount() != n {
				t.Errorf("{%s} bucket le=%v = %d, want %d", key, b.GetUpperBound(), b.GetCumulativeCount(), n)
			}
		}
	}
}

func TestInflightAndReloads(t *testing.T) {
	t.Parallel()
	m := New(Sources{})
	fams := scrape(t, m)
	wantValues(t, fams, "gatehouse_http_requests_in_flight", dto.MetricType_GAUGE, map[string]float64{"": 0})
	// Both results are exported from the start, at zero.
	wantValues(t, fams, "gatehouse_config_reloads_total", dto.MetricType_COUNTER,
		map[string]float64{"result=success": 0, "result=failure": 0})
	// No request yet: the vectors have no series, so the families are absent.
	for _, name := range []string{"gatehouse_http_requests_total", "gatehouse_http_request_duration_seconds"} {
		if fams[name] != nil {
			t.Errorf("%s present before any request", name)
		}
	}

	m.Inflight(1)
	m.Inflight(1)
	m.Inflight(1)
	m.Inflight(-1)
	m.Reload(true)
	m.Reload(true)
	m.Reload(false)
	fams = scrape(t, m)
	wantValues(t, fams, "gatehouse_http_requests_in_flight", dto.MetricType_GAUGE, map[string]float64{"": 2})
	wantValues(t, fams, "gatehouse_config_reloads_total", dto.MetricType_COUNTER,
		map[string]float64{"result=success": 2, "result=failure": 1})
}

func TestPools(t *testing.T) {
	t.Parallel()
	pools := []upstream.PoolStatus{
		{Name: "app", Backends: []upstream.BackendStatus{
			{URL: "http://10.0.0.1:8080", Healthy: true, Inflight: 3, Ejections: 0},
			{URL: "http://10.0.0.2:8080", Healthy: true, Ejected: true, Inflight: 1, Ejections: 4},
			{URL: "http://10.0.0.3:8080", Healthy: false, Ejections: 1},
		}},
		{Name: "auth", Backends: []upstream.BackendStatus{
			{URL: "https://xxxxx@auth.internal", Healthy: true, Inflight: 7, Ejections: 2},
			// Same redacted URL twice in one pool: merged into one series.
			{URL: "https://xxxxx@auth.internal", Healthy: false, Inflight: 1, Ejections: 3},
		}},
		{Name: "empty"},
	}
	m := New(Sources{Pools: func() []upstream.PoolStatus { return pools }})
	fams := scrape(t, m)
	wantValues(t, fams, "gatehouse_upstream_backend_healthy", dto.MetricType_GAUGE, map[string]float64{
		"backend=http://10.0.0.1:8080,pool=app":         1,
		"backend=http://10.0.0.2:8080,pool=app":         0, // healthy but ejected
		"backend=http://10.0.0.3:8080,pool=app":         0,
		"backend=https://xxxxx@auth.internal,pool=auth": 1,
	})
	wantValues(t, fams, "gatehouse_upstream_backend_in_flight", dto.MetricType_GAUGE, map[string]float64{
		"backend=http://10.0.0.1:8080,pool=app":         3,
		"backend=http://10.0.0.2:8080,pool=app":         1,
		"backend=http://10.0.0.3:8080,pool=app":         0,
		"backend=https://xxxxx@auth.internal,pool=auth": 8,
	})
	wantValues(t, fams, "gatehouse_upstream_backend_ejections_total", dto.MetricType_COUNTER, map[string]float64{
		"backend=http://10.0.0.1:8080,pool=app":         0,
		"backend=http://10.0.0.2:8080,pool=app":         4,
		"backend=http://10.0.0.3:8080,pool=app":         1,
		"backend=https://xxxxx@auth.internal,pool=auth": 5,
	})
}

func TestTunnels(t *testing.T) {
	t.Parallel()
	m := New(Sources{Tunnels: func() int { return 5 }})
	wantValues(t, scrape(t, m), "gatehouse_websocket_tunnels_open", dto.MetricType_GAUGE, map[string]float64{"": 5})
}

var cacheFamilies = []string{
	"gatehouse_cache_hits_total", "gatehouse_cache_misses_total", "gatehouse_cache_stale_served_total",
	"gatehouse_cache_stored_total", "gatehouse_cache_revalidated_total", "gatehouse_cache_collapsed_total",
	"gatehouse_cache_entries", "gatehouse_cache_bytes", "gatehouse_cache_buffering_bytes",
}

func TestCache(t *testing.T) {
	t.Parallel()
	stats := cache.Stats{Hits: 10, Misses: 4, StaleServed: 2, Stored: 3, Revalidated: 1, Collapsed: 6,
		Entries: 3, Bytes: 4096, Buffering: 512}
	m := New(Sources{Cache: func() (cache.Stats, bool) { return stats, true }})
	fams := scrape(t, m)
	want := []struct {
		name string
		typ  dto.MetricType
		v    float64
	}{
		{"gatehouse_cache_hits_total", dto.MetricType_COUNTER, 10},
		{"gatehouse_cache_misses_total", dto.MetricType_COUNTER, 4},
		{"gatehouse_cache_stale_served_total", dto.MetricType_COUNTER, 2},
		{"gatehouse_cache_stored_total", dto.MetricType_COUNTER, 3},
		{"gatehouse_cache_revalidated_total", dto.MetricType_COUNTER, 1},
		{"gatehouse_cache_collapsed_total", dto.MetricType_COUNTER, 6},
		{"gatehouse_cache_entries", dto.MetricType_GAUGE, 3},
		{"gatehouse_cache_bytes", dto.MetricType_GAUGE, 4096},
		{"gatehouse_cache_buffering_bytes", dto.MetricType_GAUGE, 512},
	}
	if len(want) != len(cacheFamilies) {
		t.Fatal("test tables out of step")
	}
	for _, w := range want {
		wantValues(t, fams, w.name, w.typ, map[string]float64{"": w.v})
	}
}

func TestCacheAbsent(t *testing.T) {
	t.Parallel()
	for name, src := range map[string]Sources{
		"not configured": {Cache: func() (cache.Stats, bool) { return cache.Stats{Hits: 1}, false }},
		"nil source":     {},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fams := scrape(t, New(src))
			for _, f := range cacheFamilies {
				if fams[f] != nil {
					t.Errorf("%s exported without a cache", f)
				}
			}
		})
	}
}

func TestNilSourcesExportNothing(t *testing.T) {
	t.Parallel()
	fams := scrape(t, New(Sources{}))
	for name := range fams {
		switch {
		case strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"),
			name == "gatehouse_http_requests_in_flight", name == "gatehouse_config_reloads_total":
		default:
			t.Errorf("unexpected family %s with no sources and no requests", name)
		}
	}
}

func TestCertificates(t *testing.T) {
	t.Parallel()
	a := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	m := New(Sources{Certificates: func() []CertExpiry {
		return []CertExpiry{
			{Name: "example.com", NotAfter: b},
			{Name: "api.example.com", NotAfter: a},
			{Name: "example.com", NotAfter: a}, // older copy expires first: it wins
			{Name: "unknown.example"},          // zero NotAfter: skipped
		}
	}})
	wantValues(t, scrape(t, m), "gatehouse_certificate_expiry_timestamp_seconds", dto.MetricType_GAUGE,
		map[string]float64{
			"name=example.com":     float64(a.Unix()),
			"name=api.example.com": float64(a.Unix()),
		})
}

func TestStandardCollectors(t *testing.T) {
	t.Parallel()
	fams := scrape(t, New(Sources{}))
	family(t, fams, "go_goroutines", dto.MetricType_GAUGE)
	if runtime.GOOS == "linux" {
		family(t, fams, "process_start_time_seconds", dto.MetricType_GAUGE)
	}
}

// A panicking source loses its own metrics; the rest of the scrape survives.
func TestSourcePanicKeepsScrape(t *testing.T) {
	t.Parallel()
	m := New(Sources{
		Pools:   func() []upstream.PoolStatus { panic("boom") },
		Tunnels: func() int { return 2 },
	})
	m.Reload(true)
	fams := scrape(t, m)
	wantValues(t, fams, "gatehouse_websocket_tunnels_open", dto.MetricType_GAUGE, map[string]float64{"": 2})
	wantValues(t, fams, "gatehouse_config_reloads_total", dto.MetricType_COUNTER,
		map[string]float64{"result=success": 1, "result=failure": 0})
	if fams["gatehouse_upstream_backend_healthy"] != nil {
		t.Error("pool metrics exported from a panicking source")
	}
}

func TestInvalidUTF8Labels(t *testing.T) {
	t.Parallel()
	m := New(Sources{})
	m.ObserveRequest("bad\xffsite", "r", "h1", 200, time.Millisecond)
	wantValues(t, scrape(t, m), "gatehouse_http_requests_total", dto.MetricType_COUNTER,
		map[string]float64{"code=2xx,proto=h1,route=r,site=bad\uFFFDsite": 1})
}

func TestNilMetrics(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.ObserveRequest("s", "r", "h1", 200, time.Millisecond)
	m.Inflight(1)
	m.Reload(false)
}

func TestConcurrentObserve(t *testing.T) {
	t.Parallel()
	const goroutines, perG = 8, 1000
	m := New(Sources{})
	sites := []string{"a", "b"}
	protos := []string{"h1", "h2", "h3"}
	statuses := []int{200, 301, 404, 500}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				m.Inflight(1)
				m.ObserveRequest(sites[i%2], "r", protos[(g+i)%3], statuses[i%4], time.Millisecond)
				m.Inflight(-1)
			}
		})
	}
	wg.Wait()

	fams := scrape(t, m)
	var total float64
	for _, v := range values(family(t, fams, "gatehouse_http_requests_total", dto.MetricType_COUNTER)) {
		total += v
	}
	if total != goroutines*perG {
		t.Errorf("requests_total sums to %v, want %d", total, goroutines*perG)
	}
	var count uint64
	for _, s := range family(t, fams, "gatehouse_http_request_duration_seconds", dto.MetricType_HISTOGRAM).GetMetric() {
		count += s.GetHistogram().GetSampleCount()
	}
	if count != goroutines*perG {
		t.Errorf("duration histogram counts %d, want %d", count, goroutines*perG)
	}
	// Every (site, class) pair is hit by i%2 and i%4 together: site a gets
	// 2xx and 4xx, site b 3xx and 5xx, each 2000 times over all protos.
	byClass := map[string]float64{}
	for k, v := range values(fams["gatehouse_http_requests_total"]) {
		code := strings.Split(k, ",")[0]
		site := k[strings.LastIndex(k, "site="):]
		byClass[site+","+code] += v
	}
	want := map[string]float64{"site=a,code=2xx": 2000, "site=a,code=4xx": 2000, "site=b,code=3xx": 2000, "site=b,code=5xx": 2000}
	if !maps.Equal(byClass, want) {
		t.Errorf("per site and class: got %v, want %v", byClass, want)
	}
	wantValues(t, fams, "gatehouse_http_requests_in_flight", dto.MetricType_GAUGE, map[string]float64{"": 0})
}

func TestStatusClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status int
		want   string
	}{
		{0, "2xx"}, {100, "1xx"}, {199, "1xx"}, {200, "2xx"}, {299, "2xx"}, {302, "3xx"},
		{404, "4xx"}, {499, "4xx"}, {500, "5xx"}, {599, "5xx"}, {600, "other"}, {99, "other"}, {-1, "other"},
	} {
		if got := classLabels[statusClass(tc.status)]; got != tc.want {
			t.Errorf("statusClass(%d) = %s, want %s", tc.status, got, tc.want)
		}
	}
}

func TestProtoLabel(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		major int
		want  string
	}{{0, "h1"}, {1, "h1"}, {2, "h2"}, {3, "h3"}} {
		t.Run(fmt.Sprint(tc.major), func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.ProtoMajor = tc.major
			if got := ProtoLabel(r); got != tc.want {
				t.Errorf("ProtoLabel(HTTP/%d) = %s, want %s", tc.major, got, tc.want)
			}
		})
	}
}

// ProtoLabel sees what the server really negotiated.
func TestProtoLabelLive(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- ProtoLabel(r)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	for _, tc := range []struct {
		h2   bool
		want string
	}{{false, "h1"}, {true, "h2"}} {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.ForceAttemptHTTP2 = tc.h2
		if !tc.h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			tr.TLSClientConfig.NextProtos = nil
		}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
		if p := <-got; p != tc.want {
			t.Errorf("h2=%v: ProtoLabel = %s, want %s", tc.h2, p, tc.want)
		}
	}
}

// After warm-up, recording a request allocates nothing.
func TestObserveRequestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	m := New(Sources{})
	m.ObserveRequest("site", "route", "h2", 200, time.Millisecond)
	allocs := testing.AllocsPerRun(1000, func() {
		m.Inflight(1)
		m.ObserveRequest("site", "route", "h2", 200, time.Millisecond)
		m.Inflight(-1)
	})
	if allocs != 0 {
		t.Errorf("ObserveRequest allocates %v times per call after warm-up, want 0", allocs)
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m := New(Sources{})
	sites := []string{"shop.example.com", "blog.example.com", "api.example.com", "admin.example.com"}
	routes := []string{"static", "api", "default"}
	statuses := []int{200, 200, 200, 304, 404, 502}
	for _, s := range sites { // warm-up: resolve every child once
		for _, r := range routes {
			for _, st := range statuses {
				m.ObserveRequest(s, r, "h2", st, time.Millisecond)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Inflight(1)
			m.ObserveRequest(sites[i%len(sites)], routes[i%len(routes)], "h2", statuses[i%len(statuses)],
				time.Duration(i%5000)*time.Microsecond)
			m.Inflight(-1)
			i++
		}
	})
}
