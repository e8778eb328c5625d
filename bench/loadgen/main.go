// Command loadgen is a small HTTP load generator for the benchmarks.
//
//	loadgen -url URL -proto h1|h2|h3 -c CONNS [-m STREAMS] -d DURATION
//	        [-rate REQ_PER_SEC] [-insecure] [-warmup DURATION]
//
// It opens exactly -c connections (h1: one shared http.Transport limited to
// -c connections and -c sequential workers; h2/h3: -c transports with one
// connection each and -m concurrent streams per connection), warms up for
// -warmup, measures for -d and prints one JSON object on stdout:
//
//	{"requests":N,"errors":N,"duration_s":F,"rps":F,"bytes":N,
//	 "p50_ms":F,"p90_ms":F,"p99_ms":F,"p999_ms":F,"max_ms":F}
//
// Without -rate it runs a closed loop (each worker sends its next request
// when the previous one completed; latency is per request). With -rate R it
// runs an open loop: request i is due at start + i/R and its latency is
// measured from that intended time, so queueing behind a slow server is
// included (no coordinated omission). After -d it stops scheduling and waits
// up to 5s for outstanding requests; those still unfinished count as errors.
//
// requests counts 2xx responses whose body was read completely, errors
// everything else, bytes the body bytes read. Latency percentiles come from
// a log-linear histogram (1 µs buckets below ~1 ms, <1% relative width
// above). SIGINT/SIGTERM end the run early and the JSON is still printed.
// Fatal errors (bad flags, no connection at all) go to stderr with exit
// status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.URL, "url", "", "target `URL` (http:// or https://; h3 needs https://)")
	fs.StringVar(&o.Proto, "proto", "h1", "protocol: h1, h2 or h3")
	fs.IntVar(&o.Conns, "c", 1, "number of connections")
	fs.IntVar(&o.Streams, "m", 1, "concurrent streams per connection (h2/h3; ignored for h1)")
	fs.DurationVar(&o.Duration, "d", 10*time.Second, "measured duration")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "warm-up duration (not counted)")
	fs.Float64Var(&o.Rate, "rate", 0, "open loop: total requests per second (0 = closed loop)")
	fs.BoolVar(&o.Insecure, "insecure", false, "skip TLS certificate verification")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if _, err := o.validate(); err != nil {
		return o, err
	}
	return o, nil
}

func realMain(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintln(stderr, "loadgen:", err)
		}
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second signal kills the process the usual way.
	context.AfterFunc(ctx, stop)

	res, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	if res.Errors > 0 && res.firstErr != nil {
		fmt.Fprintf(stderr, "loadgen: %d errors; first: %v\n", res.Errors, res.firstErr)
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	out = append(out, '\n')
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	return 0
}
