package integration

// GET /metrics on the admin API: the request counters and histogram per
// site, route, status class and protocol, the in-flight gauge, the
// upstream and Go runtime gauges. scrapeMetrics and metricValue are used by
// reload_test.go too.

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics fetches GET /metrics from the admin API and parses the text
// exposition format.
func scrapeMetrics(t testing.TB, ag *adminGateway) map[string]*dto.MetricFamily {
	t.Helper()
	r := ag.Admin(t, http.MethodGet, "/metrics")
	if r.Status != http.StatusOK {
		t.Fatalf("GET /metrics = %d %q, want 200", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET /metrics Content-Type = %q, want the text exposition format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(r.Body))
	if err != nil {
		t.Fatalf("GET /metrics does not parse as the text exposition format: %v\n%s", err, r.Body)
	}
	return fams
}

// metricLabels renders a series' labels as "a=x,b=y" in name order.
func metricLabels(m *dto.Metric) string {
	var parts []string
	for _, lp := range m.GetLabel() {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// hasLabels reports whether m has every label in want with its value.
func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// sampleValue is the value of a counter, gauge or untyped series.
func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// metricValue returns the value of the one series of family name whose
// labels include labels, failing the test if there is not exactly one.
func metricValue(t testing.TB, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("/metrics has no %s; it has %v", name, slices.Sorted(maps.Keys(fams)))
	}
	var found []*dto.Metric
	for _, m := range f.GetMetric() {
		if hasLabels(m, labels) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		var all []string
		for _, m := range f.GetMetric() {
			all = append(all, "{"+metricLabels(m)+"}")
		}
		t.Fatalf("/metrics has %d series of %s with labels %v, want 1; series: %v", len(found), name, labels, all)
	}
	return sampleValue(found[0])
}

// seriesValues maps every series of a counter or gauge family to its value
// (nil when the family is absent).
func seriesValues(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	f := fams[name]
	if f == nil {
		return nil
	}
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		out[metricLabels(m)] = sampleValue(m)
	}
	return out
}

// TestMetricsCounts sends a known mix of requests (7 answered 200 by a
// respond route, 3 for hosts no site serves, 2 to a route whose only
// backend refuses connections) and checks that /metrics counts exactly
// those, by site, route, status class and protocol, in the counter and the
// duration histogram; that nothing is in flight afterwards; that admin API
// requests (the scrapes themselves) are not counted; and that the upstream
// and Go runtime gauges are there.
func TestMetricsCounts(t *testing.T) {
	t.Parallel()
	dead := deadAddr(t)
	ag := startAdminGatewayCfg(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  down:
    backends: [{url: http://%s}]
sites:
  - hosts: [m.test]
    tls: off
    routes:
      - path: /ok
        respond: {status: 200, body: "ok\n"}
      - path: /dead
        upstream: down
`, dead)})

	// Before any request: the request families have no series yet, or
	// only zeros, and a scrape is not a request.
	if got := seriesValues(scrapeMetrics(t, ag), "gatehouse_http_requests_total"); len(got) != 0 {
		t.Errorf("gatehouse_http_requests_total before any request = %v, want no series", got)
	}

	for i := range 7 {
		if r := ag.Get(t, "m.test", fmt.Sprintf("/ok?i=%d", i)); r.Status != http.StatusOK || r.Body != "ok\n" {
			t.Fatalf("GET m.test/ok = %d %q, want 200", r.Status, r.Body)
		}
	}
	for i := range 3 {
		// A different unknown host each time: all share the site "-".
		if r := ag.Get(t, fmt.Sprintf("nosuch%d.test", i), "/missing"); r.Status != http.StatusNotFound {
			t.Fatalf("GET nosuch%d.test/missing = %d %q, want 404", i, r.Status, r.Body)
		}
	}
	for range 2 {
		if r := ag.Get(t, "m.test", "/dead"); r.Status != http.StatusBadGateway {
			t.Fatalf("GET m.test/dead (backend refuses) = %d %q, want 502", r.Status, r.Body)
		}
	}

	wantRequests := map[string]float64{
		"code=2xx,proto=h1,route=m.test/ok,site=m.test":   7,
		"code=4xx,proto=h1,route=-,site=-":                3,
		"code=5xx,proto=h1,route=m.test/dead,site=m.test": 2,
	}
	wantCounts := map[string]uint64{
		"proto=h1,route=m.test/ok,site=m.test":   7,
		"proto=h1,route=-,site=-":                3,
		"proto=h1,route=m.test/dead,site=m.test": 2,
	}
	// The counters are updated as each response completes, which the client
	// may see a moment before: poll until the totals are there.
	var fams map[string]*dto.MetricFamily
	pollUntil(t, 5*time.Second, "12 requests counted and none in flight", func() (bool, string) {
		fams = scrapeMetrics(t, ag)
		total := 0.0
		for _, v := range seriesValues(fams, "gatehouse_http_requests_total") {
			total += v
		}
		inflight := seriesValues(fams, "gatehouse_http_requests_in_flight")
		return total >= 12 && inflight[""] == 0, fmt.Sprintf("%v requests, in flight %v", total, inflight)
	})

	if got := seriesValues(fams, "gatehouse_http_requests_total"); !maps.Equal(got, wantRequests) {
		t.Errorf("gatehouse_http_requests_total =\n  %v\nwant\n  %v", got, wantRequests)
	}
	if f := fams["gatehouse_http_requests_total"]; f != nil && f.GetType() != dto.MetricType_COUNTER {
		t.Errorf("gatehouse_http_requests_total is a %v, want a counter", f.GetType())
	}

	h := fams["gatehouse_http_request_duration_seconds"]
	switch {
	case h == nil:
		t.Errorf("/metrics has no gatehouse_http_request_duration_seconds")
	case h.GetType() != dto.MetricType_HISTOGRAM:
		t.Errorf("gatehouse_http_request_duration_seconds is a %v, want a histogram", h.GetType())
	default:
		got := map[string]uint64{}
		for _, m := range h.GetMetric() {
			hist := m.GetHistogram()
			got[metricLabels(m)] = hist.GetSampleCount()
			buckets := hist.GetBucket()
			if len(buckets) == 0 {
				t.Errorf("histogram {%s} has no buckets", metricLabels(m))
				continue
			}
			for i := 1; i < len(buckets); i++ {
				if buckets[i].GetCumulativeCount() < buckets[i-1].GetCumulativeCount() {
					t.Errorf("histogram {%s}: bucket le=%v count %d below the previous one's %d", metricLabels(m),
						buckets[i].GetUpperBound(), buckets[i].GetCumulativeCount(), buckets[i-1].GetCumulativeCount())
				}
			}
			if top := buckets[len(buckets)-1]; top.GetCumulativeCount() != hist.GetSampleCount() {
				t.Errorf("histogram {%s}: %d samples, but only %d in the le=%v bucket (no request takes that long here)",
					metricLabels(m), hist.GetSampleCount(), top.GetCumulativeCount(), top.GetUpperBound())
			}
			if s := hist.GetSampleSum(); s < 0 || s > 30 {
				t.Errorf("histogram {%s}: sum %v s for a few fast requests", metricLabels(m), s)
			}
		}
		if !maps.Equal(got, wantCounts) {
			t.Errorf("gatehouse_http_request_duration_seconds counts =\n  %v\nwant\n  %v", got, wantCounts)
		}
	}

	if v := metricValue(t, fams, "gatehouse_http_requests_in_flight", nil); v != 0 {
		t.Errorf("gatehouse_http_requests_in_flight = %v after every request finished, want 0", v)
	}

	backendURL := "http://" + dead
	healthy := metricValue(t, fams, "gatehouse_upstream_backend_healthy", map[string]string{"pool": "down", "backend": backendURL})
	st := ag.Backend(t, "down", backendURL)
	if want := map[bool]float64{true: 1, false: 0}[st.Healthy && !st.Ejected]; healthy != want {
		t.Errorf("gatehouse_upstream_backend_healthy{pool=down} = %v, but /upstreams says healthy %v ejected %v",
			healthy, st.Healthy, st.Ejected)
	}
	metricValue(t, fams, "gatehouse_upstream_backend_in_flight", map[string]string{"pool": "down", "backend": backendURL})
	if v := metricValue(t, fams, "go_goroutines", nil); v < 1 {
		t.Errorf("go_goroutines = %v, want a positive count", v)
	}
	if v := metricValue(t, fams, "gatehouse_websocket_tunnels_open", nil); v != 0 {
		t.Errorf("gatehouse_websocket_tunnels_open = %v, want 0", v)
	}
	for _, result := range []string{"success", "failure"} {
		if v := metricValue(t, fams, "gatehouse_config_reloads_total", map[string]string{"result": result}); v != 0 {
			t.Errorf(`gatehouse_config_reloads_total{result=%q} = %v without any reload, want 0`, result, v)
		}
	}

	// Scraping again changes nothing: admin requests are not counted.
	if got := seriesValues(scrapeMetrics(t, ag), "gatehouse_http_requests_total"); !maps.Equal(got, wantRequests) {
		t.Errorf("after more admin requests gatehouse_http_requests_total = %v, want %v", got, wantRequests)
	}
}
