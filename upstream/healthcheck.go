package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Active health checks: one goroutine per pool (Pool.Start, stopped by
// Pool.Close) probes every backend each interval, plus up to 10% jitter so
// that pools started together do not probe in step. The probes of one
// round run concurrently (each bounded by the timeout) and the round waits
// for all of them, so a probe never outlives the checker.
//
// A probe is GET path over the backend's own transport (its scheme, h2c
// included; https with the pool's TLS settings), with Host set to
// health_check.host, else the pool's host_header, else the backend's
// host:port. It passes when the status is in expect_status and, if
// expect_body is set, the first 64 KiB of the body contain it. A healthy
// backend leaves rotation after fall failed probes in a row; an unhealthy
// one returns after rise passed probes in a row. Backends start healthy.

// healthCheck is a pool's resolved config.HealthCheck.
type healthCheck struct {
	path     string
	interval time.Duration
	timeout  time.Duration
	expect   config.StatusRange
	body     []byte
	rise     int32
	fall     int32
	host     string // "" sends the backend's host:port
}

// Defaults for zero fields of a config.HealthCheck (config.Load fills in
// the same).
const (
	defaultCheckInterval = 5 * time.Second
	defaultCheckTimeout  = 2 * time.Second
	defaultCheckRise     = 2
	defaultCheckFall     = 3

	// maxCheckBody is how much of a probe's response body is read.
	maxCheckBody = 64 << 10
	// checkUserAgent identifies probes in backend logs.
	checkUserAgent = "gatehouse-health-check"
)

// newHealthCheck returns nil when c is nil (no active checks).
func newHealthCheck(c *config.HealthCheck, hostHeader string) *healthCheck {
	if c == nil {
		return nil
	}
	hc := &healthCheck{
		path:     c.Path,
		interval: durationOr(c.Interval, defaultCheckInterval),
		timeout:  durationOr(c.Timeout, defaultCheckTimeout),
		expect:   c.ExpectStatus,
		body:     []byte(c.ExpectBody),
		rise:     int32(min(max(c.Rise, 0), 1<<20)),
		fall:     int32(min(max(c.Fall, 0), 1<<20)),
		host:     c.Host,
	}
	if hc.path == "" {
		hc.path = "/"
	}
	if hc.expect == (config.StatusRange{}) {
		hc.expect = config.StatusRange{Min: 200, Max: 399}
	}
	if hc.rise == 0 {
		hc.rise = defaultCheckRise
	}
	if hc.fall == 0 {
		hc.fall = defaultCheckFall
	}
	if hc.host == "" {
		hc.host = hostHeader
	}
	return hc
}

// checker is the goroutine started by Pool.Start.
type checker struct {
	pool *Pool
	hc   *healthCheck
	log  *slog.Logger
}

// run probes until ctx is canceled: a round at once, then one each
// interval plus jitter after the previous round ended.
func (c *checker) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.round(ctx)
		t.Reset(c.hc.interval + rand.N(c.hc.interval/10+1))
	}
}

// round probes every backend concurrently and waits for all probes.
func (c *checker) round(ctx context.Context) {
	var wg sync.WaitGroup
	for _, b := range c.pool.Backends {
		wg.Go(func() { c.check(ctx, b) })
	}
	wg.Wait()
}

// check probes b once and applies the result to its rise/fall counters.
// A probe cut short by ctx (the pool closing) counts for nothing.
func (c *checker) check(ctx context.Context, b *Backend) {
	err := c.probe(ctx, b)
	if ctx.Err() != nil {
		return
	}
	c.apply(b, err)
}

// apply records one probe result (nil: passed) on b, moving it in or out
// of rotation when a threshold is reached.
func (c *checker) apply(b *Backend, err error) {
	if err == nil {
		b.checkFails.Store(0)
		b.checkErr.Store(nil)
		if b.healthy.Load() {
			b.checkPasses.Store(0)
			return
		}
		if n := b.checkPasses.Add(1); n >= c.hc.rise {
			b.checkPasses.Store(0)
			b.healthy.Store(true)
			c.log.LogAttrs(context.Background(), slog.LevelInfo, "backend back in rotation: health checks pass",
				slog.String("pool", c.pool.Name), slog.String("backend", b.name), slog.Int("passes", int(n)))
		}
		return
	}
	msg := describeCheckError(err)
	b.checkErr.Store(&msg)
	b.checkPasses.Store(0)
	n := b.checkFails.Add(1)
	if b.healthy.Load() && n >= c.hc.fall {
		b.healthy.Store(false)
		c.log.LogAttrs(context.Background(), slog.LevelWarn, "backend left rotation: health checks fail",
			slog.String("pool", c.pool.Name), slog.String("backend", b.name),
			slog.Int("failures", int(n)), slog.String("reason", msg))
	}
}

// errCheckStatus and errCheckBody describe probes that got an answer.
type errCheckStatus struct {
	got    int
	expect config.StatusRange
}

func (e *errCheckStatus) Error() string {
	return fmt.Sprintf("status %d, expected %d-%d", e.got, e.expect.Min, e.expect.Max)
}

var errCheckBody = errors.New("body does not contain the expected text")

// probe sends one health check to b; nil means it passed.
func (c *checker) probe(ctx context.Context, b *Backend) error {
	ctx, cancel := context.WithTimeout(ctx, c.hc.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.scheme+"://"+b.URL.Host+c.hc.path, nil)
	if err != nil {
		return err
	}
	if c.hc.host != "" {
		req.Host = c.hc.host
	}
	req.Header.Set("User-Agent", checkUserAgent)
	res, err := b.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxCheckBody))
	if !c.hc.expect.Contains(res.StatusCode) {
		return &errCheckStatus{got: res.StatusCode, expect: c.hc.expect}
	}
	if len(c.hc.body) > 0 {
		if err != nil {
			return err
		}
		if !bytes.Contains(body, c.hc.body) {
			return errCheckBody
		}
	}
	return nil
}

// describeCheckError is a probe failure as shown in Status and logs: short,
// without Go's wrapping.
func describeCheckError(err error) string {
	var se *errCheckStatus
	var ne net.Error
	var sys *os.SyscallError
	switch {
	case errors.As(err, &se), errors.Is(err, errCheckBody):
		return err.Error()
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return "timeout"
	case isDialError(err) && errors.As(err, &sys):
		return "connect: " + sys.Err.Error()
	case isDialError(err):
		return "connect failed"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:] // the innermost cause
	}
	return s
}
