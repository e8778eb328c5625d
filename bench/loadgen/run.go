package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

const (
	// primeTimeout bounds the first request on every connection, which
	// establishes the connections before the warm-up starts.
	primeTimeout = 10 * time.Second
	// drainGrace is how long an open-loop run waits for outstanding
	// requests after it stops scheduling.
	drainGrace = 5 * time.Second
	// dialTimeout bounds TCP connects and TLS handshakes.
	dialTimeout = 10 * time.Second
	// queueLen is the capacity of the open-loop dispatch queue.
	queueLen = 1 << 14
	// bodyBufSize is the size of the pooled buffers bodies are read into.
	bodyBufSize = 16 << 10
)

type options struct {
	URL      string
	Proto    string // "h1", "h2" or "h3"
	Conns    int
	Streams  int // per connection, h2/h3 only
	Duration time.Duration
	Warmup   time.Duration
	Rate     float64 // requests per second; 0 = closed loop
	Insecure bool
}

// result is the JSON object printed on stdout.
type result struct {
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"`
	DurationS float64 `json:"duration_s"`
	RPS       float64 `json:"rps"`
	Bytes     int64   `json:"bytes"`
	P50Ms     float64 `json:"p50_ms"`
	P90Ms     float64 `json:"p90_ms"`
	P99Ms     float64 `json:"p99_ms"`
	P999Ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`

	firstErr error // first error in the measured window, for stderr only
}

func (o *options) validate() (*url.URL, error) {
	if o.URL == "" {
		return nil, errors.New("-url is required")
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("-url: %v", err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("-url %q has no host", o.URL)
	}
	switch o.Proto {
	case "h1", "h2":
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("-proto %s needs an http:// or https:// URL", o.Proto)
		}
	case "h3":
		if u.Scheme != "https" {
			return nil, errors.New("-proto h3 needs an https:// URL")
		}
	default:
		return nil, fmt.Errorf("-proto must be h1, h2 or h3, not %q", o.Proto)
	}
	if o.Conns < 1 {
		return nil, errors.New("-c must be at least 1")
	}
	if o.Streams < 1 {
		return nil, errors.New("-m must be at least 1")
	}
	if o.Duration <= 0 {
		return nil, errors.New("-d must be positive")
	}
	if o.Warmup < 0 {
		return nil, errors.New("-warmup must not be negative")
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return nil, errors.New("-rate must be a positive number (or 0 for a closed loop)")
	}
	return u, nil
}

var bodyBufPool = sync.Pool{New: func() any {
	b := make([]byte, bodyBufSize)
	return &b
}}

// statusError reports a non-2xx response.
type statusError int

func (e statusError) Error() string { return "unexpected status " + strconv.Itoa(int(e)) }

// worker issues requests one at a time over its round tripper. Its counters
// are only written by its own goroutine and read after it has finished.
type worker struct {
	rt  http.RoundTripper
	req *http.Request

	requests int64
	errors   int64
	bytes    int64
	_        [40]byte // keep workers' counters on separate cache lines
}

// do performs one request and reads the whole body. ok is true for a 2xx
// response whose body was read to EOF; resp reports whether any response
// was received at all.
func (w *worker) do(req *http.Request) (n int64, ok, resp bool, err error) {
	res, err := w.rt.RoundTrip(req)
	if err != nil {
		return 0, false, false, err
	}
	bp := bodyBufPool.Get().(*[]byte)
	buf := *bp
	for {
		m, rerr := res.Body.Read(buf)
		n += int64(m)
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	bodyBufPool.Put(bp)
	res.Body.Close()
	if err == nil && (res.StatusCode < 200 || res.StatusCode > 299) {
		err = statusError(res.StatusCode)
	}
	return n, err == nil, true, err
}

// state is shared by all workers of one run.
type state struct {
	hist     histogram
	anyResp  atomic.Bool  // priming got some response (connectivity)
	aborted  atomic.Bool  // stop now and discard whatever completes
	firstErr atomic.Value // errBox; first error inside the measured window
	primeErr atomic.Value // errBox; first error while priming
}

type errBox struct{ err error }

func noteErr(v *atomic.Value, err error) {
	if v.Load() == nil {
		v.CompareAndSwap(nil, errBox{err})
	}
}

func loadErr(v *atomic.Value) error {
	if b, ok := v.Load().(errBox); ok {
		return b.err
	}
	return nil
}

// client holds the transports of a run and the workers bound to them.
type client struct {
	workers []*worker
	// primers[i] is the worker whose first request opens connection i.
	primers []*worker
	closers []func()
}

func (c *client) close() {
	for _, f := range c.closers {
		f()
	}
}

func newClient(o *options, u *url.URL, reqCtx context.Context) (*client, error) {
	tlsCfg := &tls.Config{
		InsecureSkipVerify: o.Insecure,
		ServerName:         u.Hostname(),
	}
	c := &client{}
	newReq := func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, o.URL, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("User-Agent", "gatehouse-loadgen")
		return req, nil
	}
	addWorker := func(rt http.RoundTripper) (*worker, error) {
		req, err := newReq()
		if err != nil {
			return nil, err
		}
		w := &worker{rt: rt, req: req}
		c.workers = append(c.workers, w)
		return w, nil
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}

	switch o.Proto {
	case "h1":
		cfg := tlsCfg.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		protos := new(http.Protocols)
		protos.SetHTTP1(true)
		t := &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			TLSClientConfig:     cfg,
			TLSHandshakeTimeout: dialTimeout,
			MaxIdleConns:        o.Conns,
			MaxIdleConnsPerHost: o.Conns,
			MaxConnsPerHost:     o.Conns,
			DisableCompression:  true,
			Protocols:           protos,
		}
		c.closers = append(c.closers, t.CloseIdleConnections)
		for range o.Conns {
			w, err := addWorker(t)
			if err != nil {
				return nil, err
			}
			c.primers = append(c.primers, w)
		}
	case "h2":
		plain := u.Scheme == "http"
		cfg := tlsCfg.Clone()
		cfg.NextProtos = []string{"h2"}
		for range o.Conns {
			t := &http2.Transport{
				TLSClientConfig:    cfg,
				DisableCompression: true,
				AllowHTTP:          plain,
				// Queue streams beyond the server's limit on this
				// connection instead of dialing another one.
				StrictMaxConcurrentStreams: true,
				DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
					conn, err := dialer.DialContext(ctx, network, addr)
					if err != nil || plain {
						return conn, err
					}
					tc := tls.Client(conn, cfg)
					hctx, cancel := context.WithTimeout(ctx, dialTimeout)
					defer cancel()
					if err := tc.HandshakeContext(hctx); err != nil {
						conn.Close()
						return nil, err
					}
					if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
						conn.Close()
						return nil, fmt.Errorf("server did not negotiate h2 (ALPN %q)", p)
					}
					return tc, nil
				},
			}
			c.closers = append(c.closers, t.CloseIdleConnections)
			for s := range o.Streams {
				w, err := addWorker(t)
				if err != nil {
					return nil, err
				}
				if s == 0 {
					c.primers = append(c.primers, w)
				}
			}
		}
	case "h3":
		for range o.Conns {
			t := &http3.Transport{
				TLSClientConfig:    tlsCfg.Clone(),
				DisableCompression: true,
				QUICConfig: &quic.Config{
					HandshakeIdleTimeout: dialTimeout,
					KeepAlivePeriod:      10 * time.Second,
				},
			}
			c.closers = append(c.closers, func() { t.Close() })
			for s := range o.Streams {
				w, err := addWorker(t)
				if err != nil {
					return nil, err
				}
				if s == 0 {
					c.primers = append(c.primers, w)
				}
			}
		}
	}
	return c, nil
}

// run executes one load test. It returns an error only for fatal problems
// (bad options, no connection could be made); cancelling ctx stops the run
// early and still returns the figures gathered so far.
func run(ctx context.Context, o options) (*result, error) {
	u, err := o.validate()
	if err != nil {
		return nil, err
	}
	if o.Proto == "h1" {
		o.Streams = 1
	}
	reqCtx, cancelReqs := context.WithCancel(context.Background())
	defer cancelReqs()
	cl, err := newClient(&o, u, reqCtx)
	if err != nil {
		return nil, err
	}
	defer cl.close()

	st := &state{}

	// Open every connection with one request each (part of the warm-up).
	if err := prime(ctx, cl, st); err != nil {
		if ctx.Err() != nil {
			return &result{}, nil
		}
		return nil, err
	}

	start := time.Now()
	measureStart := start.Add(o.Warmup)
	measureEnd := measureStart.Add(o.Duration)

	// On cancellation of ctx: discard everything and stop right away.
	stopAbort := context.AfterFunc(ctx, func() {
		st.aborted.Store(true)
		cancelReqs()
	})
	defer stopAbort()

	var end time.Time
	if o.Rate > 0 {
		end = openLoop(ctx, &o, cl, st, start, measureStart, cancelReqs)
	} else {
		end = closedLoop(ctx, cl, st, measureStart, measureEnd, cancelReqs)
	}

	res := &result{firstErr: loadErr(&st.firstErr)}
	for _, w := range cl.workers {
		res.Requests += w.requests
		res.Errors += w.errors
		res.Bytes += w.bytes
	}
	if end.After(measureEnd) {
		end = measureEnd
	}
	if d := end.Sub(measureStart); d > 0 {
		res.DurationS = d.Seconds()
		res.RPS = float64(res.Requests) / res.DurationS
	}
	s := st.hist.snapshot()
	res.P50Ms = s.percentileMs(0.50)
	res.P90Ms = s.percentileMs(0.90)
	res.P99Ms = s.percentileMs(0.99)
	res.P999Ms = s.percentileMs(0.999)
	res.MaxMs = s.maxMs()
	res.round()
	return res, nil
}

func (r *result) round() {
	r3 := func(f float64) float64 { return math.Round(f*1000) / 1000 }
	r.DurationS = math.Round(r.DurationS*1e6) / 1e6
	r.RPS = r3(r.RPS)
	r.P50Ms, r.P90Ms, r.P99Ms, r.P999Ms, r.MaxMs = r3(r.P50Ms), r3(r.P90Ms), r3(r.P99Ms), r3(r.P999Ms), r3(r.MaxMs)
}

// prime sends one request on every connection concurrently. It fails if
// none of them got a response.
func prime(ctx context.Context, cl *client, st *state) error {
	pctx, cancel := context.WithTimeout(ctx, primeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, w := range cl.primers {
		wg.Go(func() {
			_, _, gotResp, err := w.do(w.req.WithContext(pctx))
			if gotResp {
				st.anyResp.Store(true)
			}
			if err != nil {
				noteErr(&st.primeErr, err)
			}
		})
	}
	wg.Wait()
	if st.anyResp.Load() {
		return nil
	}
	return fmt.Errorf("cannot connect: %v", loadErr(&st.primeErr))
}

// closedLoop runs every worker back to back until measureEnd or until ctx is
// cancelled. It returns when the measured window ended.
func closedLoop(ctx context.Context, cl *client, st *state, measureStart, measureEnd time.Time, cancelReqs func()) time.Time {
	var wg sync.WaitGroup
	for _, w := range cl.workers {
		wg.Go(func() {
			for !st.aborted.Load() {
				t0 := time.Now()
				n, ok, _, err := w.do(w.req)
				t1 := time.Now()
				if st.aborted.Load() || !t1.Before(measureEnd) {
					return
				}
				if t1.Before(measureStart) {
					continue // warm-up
				}
				w.bytes += n
				if ok {
					w.requests++
					st.hist.record(int64(t1.Sub(t0)))
				} else {
					w.errors++
					noteErr(&st.firstErr, err)
				}
			}
		})
	}
	end := measureEnd
	t := time.NewTimer(time.Until(measureEnd))
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		end = time.Now()
	}
	st.aborted.Store(true)
	cancelReqs()
	wg.Wait()
	return end
}

// openLoop schedules request i at start + i/rate and hands the intended
// start times to the workers; latency is measured from the intended start.
// It returns when scheduling stopped.
func openLoop(ctx context.Context, o *options, cl *client, st *state, start, measureStart time.Time, cancelReqs func()) time.Time {
	queue := make(chan int64, queueLen) // intended start, ns after start
	var wg sync.WaitGroup
	for _, w := range cl.workers {
		wg.Go(func() {
			for off := range queue {
				if st.aborted.Load() {
					continue // drain
				}
				intended := start.Add(time.Duration(off))
				n, ok, _, err := w.do(w.req)
				t1 := time.Now()
				if st.aborted.Load() || intended.Before(measureStart) {
					continue // aborted or warm-up
				}
				w.bytes += n
				if ok {
					w.requests++
					st.hist.record(int64(t1.Sub(intended)))
				} else {
					w.errors++
					noteErr(&st.firstErr, err)
				}
			}
		})
	}

	limit := int64(o.Warmup + o.Duration)
	nsPerReq := 1e9 / o.Rate
	end := measureStart.Add(o.Duration)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
dispatch:
	for i := int64(0); ; i++ {
		off := int64(float64(i) * nsPerReq)
		if off >= limit {
			break
		}
		if wait := time.Until(start.Add(time.Duration(off))); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				end = time.Now()
				break dispatch
			}
		}
		select {
		case queue <- off:
		case <-ctx.Done():
			end = time.Now()
			break dispatch
		}
	}
	close(queue)

	// Let outstanding requests finish; past the grace period cancel them,
	// and they (and whatever is still queued) count as errors.
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	grace := time.NewTimer(drainGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		cancelReqs()
		<-done
	case <-ctx.Done():
		<-done
	}
	return end
}
