package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/upstream"
)

// funcCollector is a collector whose metrics are computed at scrape time by
// collect. A panic in collect (that is, in a Source) is turned into an
// invalid metric: the scrape reports the error and serves everything else,
// instead of the panic killing the process from the registry's goroutine.
type funcCollector struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	defer func() {
		if v := recover(); v != nil {
			ch <- prometheus.NewInvalidMetric(c.descs[0], fmt.Errorf("metrics source panicked: %v", v))
		}
	}()
	c.collect(ch)
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
}

// poolCollector exports the state of every backend of every pool.
func poolCollector(pools func() []upstream.PoolStatus) prometheus.Collector {
	healthy := desc("upstream_backend_healthy",
		"Whether a backend takes requests: 1 when healthy and not ejected, else 0.", "pool", "backend")
	inflight := desc("upstream_backend_in_flight",
		"Requests in progress on a backend.", "pool", "backend")
	ejections := desc("upstream_backend_ejections_total",
		"Passive-health ejections of a backend since its pool was built.", "pool", "backend")
	return &funcCollector{
		descs: []*prometheus.Desc{healthy, inflight, ejections},
		collect: func(ch chan<- prometheus.Metric) {
			for _, b := range backendSeries(pools()) {
				ch <- prometheus.MustNewConstMetric(healthy, prometheus.GaugeValue, b.healthy, b.pool, b.backend)
				ch <- prometheus.MustNewConstMetric(inflight, prometheus.GaugeValue, b.inflight, b.pool, b.backend)
				ch <- prometheus.MustNewConstMetric(ejections, prometheus.CounterValue, b.ejections, b.pool, b.backend)
			}
		},
	}
}

type backendSample struct {
	pool, backend                string
	healthy, inflight, ejections float64
}

// backendSeries flattens the pools into one sample per (pool, backend). A
// registry refuses two metrics with the same labels, so backends that share
// a redacted URL in one pool (or pools that share a name) are merged: their
// in-flight and ejection counts add up, and the entry is healthy when any of
// them is.
func backendSeries(pools []upstream.PoolStatus) []backendSample {
	var out []backendSample
	seen := map[[2]string]int{}
	for _, p := range pools {
		for _, b := range p.Backends {
			h := 0.0
			if b.Healthy && !b.Ejected {
				h = 1
			}
			key := [2]string{validLabel(p.Name), validLabel(b.URL)}
			if i, dup := seen[key]; dup {
				s := &out[i]
				s.healthy = max(s.healthy, h)
				s.inflight += float64(b.Inflight)
				s.ejections += float64(b.Ejections)
				continue
			}
			seen[key] = len(out)
			out = append(out, backendSample{
				pool: key[0], backend: key[1],
				healthy: h, inflight: float64(b.Inflight), ejections: float64(b.Ejections),
			})
		}
	}
	return out
}

// tunnelCollector exports the number of open WebSocket tunnels.
func tunnelCollector(tunnels func() int) prometheus.Collector {
	open := desc("websocket_tunnels_open", "WebSocket tunnels open now.")
	return &funcCollector{
		descs: []*prometheus.Desc{open},
		collect: func(ch chan<- prometheus.Metric) {
			ch <- prometheus.MustNewConstMetric(open, prometheus.GaugeValue, float64(tunnels()))
		},
	}
}

// cacheCollector exports the response cache's counters, or nothing when no
// cache is configured.
func cacheCollector(stats func() (cache.Stats, bool)) prometheus.Collector {
	type stat struct {
		d   *prometheus.Desc
		t   prometheus.ValueType
		get func(*cache.Stats) float64
	}
	cacheStats := []stat{
		{desc("cache_hits_total", "Responses served from the cache without forwarding."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.Hits) }},
		{desc("cache_misses_total", "Cacheable requests forwarded upstream in the foreground."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.Misses) }},
		{desc("cache_stale_served_total", "Stale responses served from the cache."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.StaleServed) }},
		{desc("cache_stored_total", "Responses written to the cache."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.Stored) }},
		{desc("cache_revalidated_total", "Stored responses freshened by a 304 Not Modified."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.Revalidated) }},
		{desc("cache_collapsed_total", "Requests served from a response another request fetched."),
			prometheus.CounterValue, func(s *cache.Stats) float64 { return float64(s.Collapsed) }},
		{desc("cache_entries", "Responses stored in the cache (each Vary variant counts)."),
			prometheus.GaugeValue, func(s *cache.Stats) float64 { return float64(s.Entries) }},
		{desc("cache_bytes", "Bytes held by the cache: bodies, headers, keys and per-entry overhead."),
			prometheus.GaugeValue, func(s *cache.Stats) float64 { return float64(s.Bytes) }},
		{desc("cache_buffering_bytes", "Bytes of response bodies being received for storing now."),
			prometheus.GaugeValue, func(s *cache.Stats) float64 { return float64(s.Buffering) }},
	}
	descs := make([]*prometheus.Desc, len(cacheStats))
	for i, s := range cacheStats {
		descs[i] = s.d
	}
	return &funcCollector{
		descs: descs,
		collect: func(ch chan<- prometheus.Metric) {
			st, ok := stats()
			if !ok {
				return
			}
			for _, s := range cacheStats {
				ch <- prometheus.MustNewConstMetric(s.d, s.t, s.get(&st))
			}
		},
	}
}

// certCollector exports the expiry of every certificate. Certificates that
// share a name (an old and a renewed one) are reported by the one that
// expires first; a zero NotAfter is skipped.
func certCollector(certs func() []CertExpiry) prometheus.Collector {
	expiry := desc("certificate_expiry_timestamp_seconds",
		"When a certificate expires (its NotAfter), in Unix seconds.", "name")
	return &funcCollector{
		descs: []*prometheus.Desc{expiry},
		collect: func(ch chan<- prometheus.Metric) {
			list := certs()
			first := make(map[string]int, len(list)) // name → index in list
			var order []string
			for i, c := range list {
				if c.NotAfter.IsZero() {
					continue
				}
				name := validLabel(c.Name)
				j, ok := first[name]
				if !ok {
					order = append(order, name)
				}
				if !ok || c.NotAfter.Before(list[j].NotAfter) {
					first[name] = i
				}
			}
			for _, name := range order {
				t := list[first[name]].NotAfter
				ch <- prometheus.MustNewConstMetric(expiry, prometheus.GaugeValue,
					float64(t.Unix()), name)
			}
		},
	}
}
