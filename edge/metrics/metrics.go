// Package metrics owns Gatehouse's Prometheus instrumentation: the request
// counters and histograms the middleware stack feeds, the gauges read from
// the running pools, tunnels, cache and certificates at scrape time, and the
// HTTP handler that exposes them all in the text exposition format.
//
// Every Metrics has its own private *prometheus.Registry; nothing is
// registered with the client library's global default registry, so any
// number of Metrics can live in one process (tests, reloads).
//
// # Metrics
//
// Requests, recorded by [Metrics.ObserveRequest] and [Metrics.Inflight]:
//
//	gatehouse_http_requests_total{site,route,code,proto}        counter; code is the status class "1xx".."5xx"
//	gatehouse_http_request_duration_seconds{site,route,proto}   histogram; buckets 1ms .. 30s
//	gatehouse_http_requests_in_flight                           gauge
//
// Upstream pools, read from [Sources].Pools at scrape time; backend is the
// backend URL with its userinfo redacted ([upstream.BackendStatus].URL):
//
//	gatehouse_upstream_backend_healthy{pool,backend}            gauge; 1 when healthy and not ejected, else 0
//	gatehouse_upstream_backend_in_flight{pool,backend}          gauge
//	gatehouse_upstream_backend_ejections_total{pool,backend}    counter; passive-health ejections since the pool was built
//
// The ejections counter restarts from zero when a reload builds a new pool;
// Prometheus' rate and increase functions treat that as a counter reset.
//
// WebSocket tunnels, read from [Sources].Tunnels:
//
//	gatehouse_websocket_tunnels_open                            gauge
//
// Response cache, read from [Sources].Cache; absent from the exposition
// while no cache is configured (Cache returns false):
//
//	gatehouse_cache_hits_total                                  counter
//	gatehouse_cache_misses_total                                counter
//	gatehouse_cache_stale_served_total                          counter
//	gatehouse_cache_stored_total                                counter
//	gatehouse_cache_revalidated_total                           counter
//	gatehouse_cache_collapsed_total                             counter
//	gatehouse_cache_entries                                     gauge
//	gatehouse_cache_bytes                                       gauge
//	gatehouse_cache_buffering_bytes                             gauge
//
// TLS certificates, read from [Sources].Certificates:
//
//	gatehouse_certificate_expiry_timestamp_seconds{name}        gauge; NotAfter as Unix seconds
//
// Configuration, recorded by [Metrics.Reload]:
//
//	gatehouse_config_reloads_total{result="success"|"failure"}  counter
//
// Plus the standard go_* and process_* metrics of the Go and process
// collectors of client_golang.
//
// # Cardinality
//
// The site and route labels must come from the configuration (site and
// route names), never from the request: each distinct (site, route, proto)
// keeps its series, and a cached lookup entry, for the life of the Metrics.
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse-proxy/gatehouse/edge/cache"
	"github.com/gatehouse-proxy/gatehouse/upstream"
)

const namespace = "gatehouse"

// DurationBuckets are the upper bounds, in seconds, of the request duration
// histogram: from 1 ms (a cached or static response) to 30 s (a slow
// upstream near a typical proxy timeout).
var DurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// CertExpiry is one certificate's expiry, named as the operator knows it
// (usually its first DNS name).
type CertExpiry struct {
	Name     string
	NotAfter time.Time
}

// Sources are the read-only views of the running gateway that the scrape-time
// collectors read. Each may be nil, in which case its metrics are not
// exported. They are called once per scrape, possibly from several scrapes at
// once, so they must be safe for concurrent use; they should return
// snapshots quickly and never block on requests.
type Sources struct {
	// Pools returns a status snapshot of every upstream pool.
	Pools func() []upstream.PoolStatus
	// Tunnels returns the number of open WebSocket tunnels.
	Tunnels func() int
	// Cache returns the response cache's counters; false when no cache is
	// configured, and then no cache metric is exported.
	Cache func() (cache.Stats, bool)
	// Certificates returns the expiry of every managed certificate.
	Certificates func() []CertExpiry
}

// Metrics records Gatehouse's metrics and serves them. All its methods are
// safe for concurrent use. The recording methods do nothing on a nil
// *Metrics, so a gateway without metrics can pass nil around.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
	reloadOK prometheus.Counter
	reloadKO prometheus.Counter

	// series maps (site, route, proto) to its resolved children. The map is
	// copy-on-write: readers load it without locking; mu serialises writers.
	series atomic.Pointer[map[seriesKey]*seriesChildren]
	mu     sync.Mutex

	handler http.Handler
}

type seriesKey struct{ site, route, proto string }

// seriesChildren are the resolved children of one (site, route, proto).
// The counters, one per status class, are resolved on first use.
type seriesChildren struct {
	site, route, proto string // valid UTF-8 label values
	duration           prometheus.Observer
	requests           [numClasses]atomic.Pointer[counterRef]
}

type counterRef struct{ c prometheus.Counter }

// Status classes, the values of the code label.
const (
	class1xx = iota
	class2xx
	class3xx
	class4xx
	class5xx
	classOther
	numClasses
)

var classLabels = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx", "other"}

// statusClass maps a status code to its class. 0 counts as 200, as net/http
// sends 200 for a handler that writes nothing; a code outside 100–599 (net/http
// lets a handler send 600–999) is "other".
func statusClass(status int) int {
	if status == 0 {
		return class2xx
	}
	if status < 100 || status > 599 {
		return classOther
	}
	return status/100 - 1
}

// New returns a Metrics with its own registry, holding the request metrics,
// the collectors for every non-nil source, and the Go and process
// collectors.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered, by site, route, status class and protocol.",
		}, []string{"site", "route", "code", "proto"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time from receiving a request to finishing its response, by site, route and protocol.",
			Buckets: DurationBuckets,
		}, []string{"site", "route", "proto"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_in_flight",
			Help: "HTTP requests being handled now.",
		}),
	}
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "config", Name: "reloads_total",
		Help: "Configuration reloads attempted, by result.",
	}, []string{"result"})
	// Resolving both children now exports them at zero from the start.
	m.reloadOK = reloads.WithLabelValues("success")
	m.reloadKO = reloads.WithLabelValues("failure")
	empty := map[seriesKey]*seriesChildren{}
	m.series.Store(&empty)

	m.reg.MustRegister(m.requests, m.duration, m.inflight, reloads,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src.Pools != nil {
		m.reg.MustRegister(poolCollector(src.Pools))
	}
	if src.Tunnels != nil {
		m.reg.MustRegister(tunnelCollector(src.Tunnels))
	}
	if src.Cache != nil {
		m.reg.MustRegister(cacheCollector(src.Cache))
	}
	if src.Certificates != nil {
		m.reg.MustRegister(certCollector(src.Certificates))
	}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A failing source drops its own metrics, not the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	})
	return m
}

// ObserveRequest records one finished request: it counts it under its status
// class and observes its duration. proto is "h1", "h2" or "h3" (see
// [ProtoLabel]). After the first request of a (site, route, proto, class) it
// allocates nothing.
func (m *Metrics) ObserveRequest(site, route, proto string, status int, d time.Duration) {
	if m == nil {
		return
	}
	s := (*m.series.Load())[seriesKey{site, route, proto}]
	if s == nil {
		s = m.resolveSeries(site, route, proto)
	}
	s.duration.Observe(d.Seconds())
	cls := statusClass(status)
	ref := s.requests[cls].Load()
	if ref == nil {
		// Racing resolvers get the same child from the vector, so
		// whichever Store wins is right.
		ref = &counterRef{m.requests.WithLabelValues(s.site, s.route, classLabels[cls], s.proto)}
		s.requests[cls].Store(ref)
	}
	ref.c.Inc()
}

// resolveSeries adds (site, route, proto) to the copy-on-write series map.
func (m *Metrics) resolveSeries(site, route, proto string) *seriesChildren {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := seriesKey{site, route, proto}
	old := *m.series.Load()
	if s := old[key]; s != nil {
		return s
	}
	s := &seriesChildren{site: validLabel(site), route: validLabel(route), proto: validLabel(proto)}
	s.duration = m.duration.WithLabelValues(s.site, s.route, s.proto)
	next := make(map[seriesKey]*seriesChildren, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = s
	m.series.Store(&next)
	return s
}

// validLabel makes v acceptable as a label value: client_golang panics on
// invalid UTF-8.
func validLabel(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	return strings.ToValidUTF8(v, "\uFFFD")
}

// Inflight adds delta to the gauge of requests in progress: +1 when a
// request starts, -1 when it ends.
func (m *Metrics) Inflight(delta int) {
	if m == nil {
		return
	}
	m.inflight.Add(float64(delta))
}

// Reload counts one configuration reload, successful or not.
func (m *Metrics) Reload(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.reloadOK.Inc()
	} else {
		m.reloadKO.Inc()
	}
}

// Handler serves the metrics in the Prometheus text exposition format
// (gzipped when the client accepts it). A source that panics loses its own
// metrics from that scrape; the rest are still served.
func (m *Metrics) Handler() http.Handler { return m.handler }

// ProtoLabel returns the proto label of a request: "h3" for HTTP/3, "h2"
// for HTTP/2 and "h1" for everything else (HTTP/1.x).
func ProtoLabel(r *http.Request) string {
	switch r.ProtoMajor {
	case 3:
		return "h3"
	case 2:
		return "h2"
	default:
		return "h1"
	}
}
