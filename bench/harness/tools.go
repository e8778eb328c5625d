package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// wrkResult is what the harness reads from wrk's report.
type wrkResult struct {
	requests   int64
	rps        float64
	bytesPerS  float64 // Transfer/sec in bytes
	sockErrors int64   // connect + read + write + timeout
	sockDetail string
	non2xx     int64
}

var (
	wrkReqsRe   = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkRPSRe    = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkXferRe   = regexp.MustCompile(`(?m)^Transfer/sec:\s+([0-9.]+)([KMGT]?B)`)
	wrkSockRe   = regexp.MustCompile(`(?m)Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRe = regexp.MustCompile(`(?m)Non-2xx or 3xx responses: (\d+)`)
)

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRPSRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output: %q", abbreviate(out, 200))
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := wrkReqsRe.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := wrkXferRe.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		mult := map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m[2]]
		r.bytesPerS = v * mult
	}
	if m := wrkSockRe.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.sockErrors += n
		}
		r.sockDetail = fmt.Sprintf("connect %s, read %s, write %s, timeout %s", m[1], m[2], m[3], m[4])
	}
	if m := wrkNon2xxRe.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// h2loadResult is what the harness reads from h2load's report.
type h2loadResult struct {
	rps                                        float64
	total, succeeded, failed, errored, timeout int64
	status2xx                                  int64
	proto                                      string // "Application protocol: h2"
}

var (
	h2FinishedRe = regexp.MustCompile(`finished in [0-9.]+m?s, ([0-9.]+) req/s`)
	h2ReqsRe     = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2StatusRe   = regexp.MustCompile(`status codes: (\d+) 2xx`)
	h2ProtoRe    = regexp.MustCompile(`Application protocol: (\S+)`)
)

func parseH2load(out string) (h2loadResult, error) {
	var r h2loadResult
	m := h2FinishedRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no \"finished in\" line in h2load output: %q", abbreviate(out, 300))
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := h2ReqsRe.FindStringSubmatch(out); m != nil {
		r.total, _ = strconv.ParseInt(m[1], 10, 64)
		r.succeeded, _ = strconv.ParseInt(m[4], 10, 64)
		r.failed, _ = strconv.ParseInt(m[5], 10, 64)
		r.errored, _ = strconv.ParseInt(m[6], 10, 64)
		r.timeout, _ = strconv.ParseInt(m[7], 10, 64)
	}
	if m := h2StatusRe.FindStringSubmatch(out); m != nil {
		r.status2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := h2ProtoRe.FindStringSubmatch(out); m != nil {
		r.proto = m[1]
	}
	return r, nil
}

// loadgenResult is bench/loadgen's one-line JSON report.
type loadgenResult struct {
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"`
	DurationS float64 `json:"duration_s"`
	RPS       float64 `json:"rps"`
	Bytes     int64   `json:"bytes"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p999_ms"`
	Max       float64 `json:"max_ms"`
}

func parseLoadgen(out string) (loadgenResult, error) {
	var r loadgenResult
	// One JSON object on stdout; tolerate stray lines around it.
	out = strings.TrimSpace(out)
	start, end := strings.Index(out, "{"), strings.LastIndex(out, "}")
	if start < 0 || end < start {
		return r, fmt.Errorf("no JSON in loadgen output: %q", abbreviate(out, 200))
	}
	if err := json.Unmarshal([]byte(out[start:end+1]), &r); err != nil {
		return r, fmt.Errorf("loadgen JSON: %w", err)
	}
	return r, nil
}

var (
	wsRSSRe   = regexp.MustCompile(`RSS per idle tunnel:\s+(-?[0-9.]+) KiB`)
	wsMostRe  = regexp.MustCompile(`most this machine can hold is about -n (\d+)`)
	wsTunnels = regexp.MustCompile(`idle tunnels:\s+(\d+)`)
)

// parseWSIdle returns the KiB per idle tunnel from bench/wsidle's output.
func parseWSIdle(out string) (float64, error) {
	m := wsRSSRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no \"RSS per idle tunnel\" in wsidle output: %q", abbreviate(out, 300))
	}
	return strconv.ParseFloat(m[1], 64)
}

// wsIdleMaxN extracts the largest -n wsidle says the machine can hold.
func wsIdleMaxN(out string) (int, bool) {
	m := wsMostRe.FindStringSubmatch(out)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil && n > 0
}

func abbreviate(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
