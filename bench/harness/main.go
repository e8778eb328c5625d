// Command harness benchmarks Gatehouse beside nginx, HAProxy and Caddy on
// this machine and writes bench/RESULTS.md. Run it through bench/run, which
// installs the Debian packages it needs first:
//
//	bench/run                 # full: 5 rounds of 10s per scenario
//	bench/run --quick         # 2 rounds of 2s; report to a temp file
//	bench/run --scenarios 1,3 --proxies gatehouse,nginx --rounds 3
//
// Every proxy serves the same origin (a separate nginx) with equivalent,
// individually tuned configurations; the proxy under test is pinned to one
// CPU and the load generator and origin to another. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o)
	if rep != nil {
		fmt.Print(rep.Tables)
		if rep.OutPath != "" {
			fmt.Fprintf(os.Stderr, "bench: report written to %s (took %s)\n", rep.OutPath, rep.Elapsed.Round(time.Second))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench/run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.Quick, "quick", false, "quick run: 2 rounds of 2s, 1000 idle WebSockets; the report goes to a temp file unless --out is given")
	fs.IntVar(&o.Rounds, "rounds", 0, "rounds per scenario (default 5, quick 2)")
	fs.DurationVar(&o.Duration, "duration", 0, "measured time of each run, whole seconds (default 10s, quick 2s)")
	warmup := fs.Duration("warmup", -1, "unmeasured run per proxy before each scenario's first round (default 1s, quick 0)")
	scen := fs.String("scenarios", "", "comma-separated scenario numbers, 1-8 (default all)")
	prox := fs.String("proxies", "", "comma-separated proxies: gatehouse,nginx,haproxy,caddy (default all)")
	out := fs.String("out", "", "report file (default bench/RESULTS.md; quick: a temp file)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temp dir (configs, logs) for debugging")
	fs.IntVar(&o.WSIdleN, "ws-n", 0, "idle WebSockets in scenario 6 (default 10000, quick 1000)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, f := range splitList(*scen) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return o, fmt.Errorf("--scenarios: %q is not a number", f)
		}
		o.Scenarios = append(o.Scenarios, n)
	}
	o.Proxies = splitList(*prox)
	switch {
	case *warmup >= 0:
		o.Warmup = *warmup
	case o.Quick:
		o.Warmup = 0
	default:
		o.Warmup = time.Second
	}
	root, err := findRoot()
	if err != nil {
		return o, err
	}
	o.Root = root
	switch {
	case *out != "":
		o.Out = *out
	case o.Quick:
		f, err := os.CreateTemp("", "gatehouse-bench-quick-*.md")
		if err != nil {
			return o, err
		}
		f.Close()
		o.Out = f.Name()
	default:
		o.Out = root + "/bench/RESULTS.md"
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
