package main

import (
	"math"
	"slices"
	"testing"
)

func TestParseWrk(t *testing.T) {
	out := `Running 2s test @ https://localhost:19443/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.23ms    2.81ms  28.67ms   83.10%
    Req/Sec     1.56k   118.07     1.95k    80.00%
  3114 requests in 2.01s, 1.50GB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:   1551.14
Transfer/sec:    764.50MB
`
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 3114 || r.rps != 1551.14 || r.bytesPerS != 764.5*(1<<20) || r.sockErrors != 4 || r.non2xx != 2 {
		t.Errorf("got %+v", r)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused"); err == nil {
		t.Error("no error for output without Requests/sec")
	}
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
spawning thread #0: 64 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Application protocol: h2

finished in 2.00s, 28646.31 req/s, 8.31MB/s
requests: 57326 total, 57390 started, 57326 done, 57320 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 57320 2xx, 0 3xx, 0 4xx, 0 5xx
`
	r, err := parseH2load(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.rps != 28646.31 || r.total != 57326 || r.succeeded != 57320 || r.failed != 6 || r.status2xx != 57320 || r.proto != "h2" {
		t.Errorf("got %+v", r)
	}
}

func TestParseLoadgen(t *testing.T) {
	r, err := parseLoadgen(`{"requests":1000,"errors":2,"duration_s":2.0,"rps":500.5,"bytes":100000,"p50_ms":0.5,"p90_ms":0.9,"p99_ms":1.5,"p999_ms":3,"max_ms":4}` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 1000 || r.Errors != 2 || r.RPS != 500.5 || r.P50 != 0.5 || r.P99 != 1.5 {
		t.Errorf("got %+v", r)
	}
	if _, err := parseLoadgen("loadgen: dial tcp: refused"); err == nil {
		t.Error("no error without JSON")
	}
}

func TestParseWSIdle(t *testing.T) {
	kib, err := parseWSIdle("gateway VmHWM:          50.0 MiB\nRSS per idle tunnel:    12.3 KiB\ngoal <= 16 KiB/tunnel:  met\n")
	if err != nil || kib != 12.3 {
		t.Errorf("got %v, %v", kib, err)
	}
	n, ok := wsIdleMaxN("wsidle: -n 10000 needs about 20064 open files in the gateway (two per tunnel) but RLIMIT_NOFILE allows 20000 here (hard limit); the most this machine can hold is about -n 9968")
	if !ok || n != 9968 {
		t.Errorf("max n: %d, %v", n, ok)
	}
}

func TestPreservedAnalysis(t *testing.T) {
	if got := preservedAnalysis(""); got != analysisPlaceholder {
		t.Errorf("empty: %q", got)
	}
	old := "# R\n\n## Results\n\nx\n\n## Analysis\n\nkeep *this*\n\n### sub\n\nand this"
	if got := preservedAnalysis(old); got != "## Analysis\n\nkeep *this*\n\n### sub\n\nand this\n" {
		t.Errorf("got %q", got)
	}
	if got := preservedAnalysis("## Analysisx\n"); got != analysisPlaceholder {
		t.Errorf("a longer heading matched: %q", got)
	}
}

func TestMedianAndCPUList(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd: %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even: %v", m)
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing")
	}
	if got := parseCPUList("0-2,5,7-8"); !slices.Equal(got, []int{0, 1, 2, 5, 7, 8}) {
		t.Errorf("cpu list: %v", got)
	}
}
