package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

const bodyLen = 1000

var body = bytes.Repeat([]byte("x"), bodyLen)

func handler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write(body)
}

// countingServer starts an httptest server that counts new connections.
func countingServer(t *testing.T, tlsH2 bool) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(handler))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if tlsH2 {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, &conns
}

func checkResult(t *testing.T, res *result) {
	t.Helper()
	t.Logf("%+v", *res)
	if res.Requests <= 0 {
		t.Fatalf("requests = %d, want > 0", res.Requests)
	}
	if res.Errors != 0 {
		t.Fatalf("errors = %d (first: %v), want 0", res.Errors, res.firstErr)
	}
	if res.Bytes != res.Requests*bodyLen {
		t.Fatalf("bytes = %d, want %d", res.Bytes, res.Requests*bodyLen)
	}
	if !(res.P50Ms <= res.P90Ms && res.P90Ms <= res.P99Ms && res.P99Ms <= res.P999Ms && res.P999Ms <= res.MaxMs) {
		t.Fatalf("percentiles not ordered: %+v", *res)
	}
	if res.MaxMs <= 0 || res.DurationS <= 0 || res.RPS <= 0 {
		t.Fatalf("implausible result: %+v", *res)
	}
}

func TestH1(t *testing.T) {
	srv, conns := countingServer(t, false)
	res, err := run(context.Background(), options{
		URL: srv.URL + "/", Proto: "h1", Conns: 3, Streams: 1,
		Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	if got := conns.Load(); got != 3 {
		t.Fatalf("h1 -c 3 opened %d connections, want 3", got)
	}
}

func TestH2(t *testing.T) {
	srv, conns := countingServer(t, true)
	res, err := run(context.Background(), options{
		URL: srv.URL + "/", Proto: "h2", Conns: 2, Streams: 4, Insecure: true,
		Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	if got := conns.Load(); got != 2 {
		t.Fatalf("h2 -c 2 -m 4 opened %d connections, want 2", got)
	}
}

func TestH2Cleartext(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(handler))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	res, err := run(context.Background(), options{
		URL: srv.URL + "/", Proto: "h2", Conns: 2, Streams: 2,
		Duration: 200 * time.Millisecond, Warmup: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	if got := conns.Load(); got != 2 {
		t.Fatalf("h2c -c 2 opened %d connections, want 2", got)
	}
}

func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestH3(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	srv := &http3.Server{
		Handler:   http.HandlerFunc(handler),
		TLSConfig: http3.ConfigureTLSConfig(selfSignedTLS(t)),
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			conns.Add(1)
			return ctx
		},
	}
	go srv.Serve(pc)
	defer func() {
		srv.Close()
		pc.Close()
	}()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	res, err := run(context.Background(), options{
		URL: "https://127.0.0.1:" + strconv.Itoa(port) + "/", Proto: "h3", Conns: 2, Streams: 3, Insecure: true,
		Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	if got := conns.Load(); got != 2 {
		t.Fatalf("h3 -c 2 -m 3 opened %d connections, want 2", got)
	}
}

func TestOpenLoopRate(t *testing.T) {
	srv, _ := countingServer(t, false)
	res, err := run(context.Background(), options{
		URL: srv.URL + "/", Proto: "h1", Conns: 4, Streams: 1, Rate: 200,
		Duration: time.Second, Warmup: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	if res.Requests < 150 || res.Requests > 250 {
		t.Fatalf("-rate 200 -d 1s completed %d requests, want 150..250", res.Requests)
	}
	if math.Abs(res.RPS-200) > 50 {
		t.Fatalf("rps = %v, want ~200", res.RPS)
	}
}

// A server that stalls for 100ms once: in an open loop the requests queued
// behind the stall must report latency from their intended start time.
func TestOpenLoopCoordinatedOmission(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 20 {
			time.Sleep(200 * time.Millisecond)
		}
		w.Write(body)
	}))
	defer srv.Close()
	res, err := run(context.Background(), options{
		URL: srv.URL, Proto: "h1", Conns: 1, Streams: 1, Rate: 100,
		Duration: 800 * time.Millisecond, Warmup: 0,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	// ~20 requests were due during the stall; they waited between 0 and
	// 200ms, so at least 5% of the 80 requests are over 50ms.
	if res.P90Ms < 50 {
		t.Fatalf("p90 = %vms, want >= 50ms (stall not reflected)", res.P90Ms)
	}
}

func TestCancelStillReports(t *testing.T) {
	srv, _ := countingServer(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	res, err := run(ctx, options{
		URL: srv.URL, Proto: "h1", Conns: 2, Streams: 1,
		Duration: 20 * time.Second, Warmup: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el > 3*time.Second {
		t.Fatalf("run took %v after cancel", el)
	}
	checkResult(t, res)
	if res.DurationS > 1 {
		t.Fatalf("duration_s = %v, want < 1", res.DurationS)
	}
}

func TestCannotConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = run(context.Background(), options{
		URL: "http://" + addr + "/", Proto: "h1", Conns: 2, Streams: 1,
		Duration: time.Second, Warmup: time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "cannot connect") {
		t.Fatalf("err = %v, want cannot connect", err)
	}
}

func TestMainJSON(t *testing.T) {
	srv, _ := countingServer(t, false)
	var out, errOut bytes.Buffer
	code := realMain([]string{"-url", srv.URL, "-proto", "h1", "-c", "2", "-d", "200ms", "-warmup", "20ms"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("stdout %q: %v", out.String(), err)
	}
	for _, k := range []string{"requests", "errors", "duration_s", "rps", "bytes", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %q in %s", k, out.String())
		}
	}
	if len(m) != 10 {
		t.Errorf("got %d keys, want 10: %s", len(m), out.String())
	}

	for _, args := range [][]string{
		{"-url", srv.URL, "-proto", "h4", "-d", "1s"},
		{"-proto", "h1", "-d", "1s"},
		{"-url", srv.URL, "-proto", "h3", "-d", "1s"},
		{"-url", srv.URL, "-c", "0"},
		{"-url", srv.URL, "-bogus"},
	} {
		out.Reset()
		errOut.Reset()
		if code := realMain(args, &out, &errOut); code != 1 || out.Len() != 0 || errOut.Len() == 0 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 1, nothing, a message", args, code, out.String(), errOut.String())
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	// 1..1000 ms, one sample each.
	for i := 1; i <= 1000; i++ {
		h.record(int64(i) * int64(time.Millisecond))
	}
	s := h.snapshot()
	for _, c := range []struct{ q, want float64 }{
		{0.5, 500}, {0.9, 900}, {0.99, 990}, {0.999, 999}, {1, 1000},
	} {
		got := s.percentileMs(c.q)
		if math.Abs(got-c.want)/c.want > 0.005 {
			t.Errorf("p%v = %v, want %v ±0.5%%", c.q*100, got, c.want)
		}
	}
	if s.maxMs() != 1000 {
		t.Errorf("max = %v, want 1000", s.maxMs())
	}

	// Sub-millisecond values are exact to the microsecond.
	var h2 histogram
	for i := 1; i <= 100; i++ {
		h2.record(int64(i) * 7 * int64(time.Microsecond)) // 7µs..700µs
	}
	s2 := h2.snapshot()
	if got := s2.percentileMs(0.5); math.Abs(got-0.350) > 0.001 {
		t.Errorf("p50 = %vms, want 0.350 ±1µs", got)
	}
	if got := s2.percentileMs(0.01); math.Abs(got-0.007) > 0.001 {
		t.Errorf("p1 = %vms, want 0.007 ±1µs", got)
	}
	if got := s2.maxMs(); got != 0.7 {
		t.Errorf("max = %v, want 0.7", got)
	}

	// Bucket layout: contiguous, monotone, and widths <= 1/128 of the value.
	prevHi := 0.0
	for i := range histBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi {
			t.Fatalf("bucket %d starts at %v, previous ended at %v", i, lo, prevHi)
		}
		if lo >= histLinear && (hi-lo)/lo > 1.0/128+1e-12 {
			t.Fatalf("bucket %d [%v,%v) too wide", i, lo, hi)
		}
		if b := bucketOf(uint64(lo)); b != i {
			t.Fatalf("bucketOf(%v) = %d, want %d", lo, b, i)
		}
		if b := bucketOf(uint64(hi) - 1); b != i {
			t.Fatalf("bucketOf(%v) = %d, want %d", hi-1, b, i)
		}
		prevHi = hi
	}
	if prevHi < 60e6 {
		t.Fatalf("histogram ends at %vµs, want >= 60s", prevHi)
	}
	// Huge values are clamped into the last bucket, max stays exact.
	var h3 histogram
	h3.record(int64(100 * time.Second))
	s3 := h3.snapshot()
	if s3.counts[histBuckets-1] != 1 || s3.maxMs() != 100000 || s3.percentileMs(0.5) > 100000 {
		t.Fatalf("clamping: %v %v", s3.maxMs(), s3.percentileMs(0.5))
	}

	// Empty histogram.
	var h4 histogram
	if s := h4.snapshot(); s.percentileMs(0.5) != 0 || s.maxMs() != 0 {
		t.Fatal("empty histogram should report zeros")
	}
}

func TestRecordAllocs(t *testing.T) {
	var h histogram
	if a := testing.AllocsPerRun(1000, func() { h.record(12345678) }); a != 0 {
		t.Fatalf("record allocates %v per call", a)
	}
}
