package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// options configure one run of the harness.
type options struct {
	Root      string        // repository root (has go.mod)
	Quick     bool          // quick defaults: 2 rounds of 2s, 1000 idle WebSockets
	Rounds    int           // rounds per scenario (interleaved between proxies)
	Duration  time.Duration // measured time of one run; whole seconds (wrk's -d)
	Warmup    time.Duration // one unmeasured run per proxy before the first round; 0 = none
	Scenarios []int
	Proxies   []string
	Out       string // report file ("" = none)
	Keep      bool   // keep the temp dir
	WSIdleN   int    // idle WebSockets in scenario 6
	Log       io.Writer
}

var allProxies = []string{"gatehouse", "nginx", "haproxy", "caddy"}

func (o options) normalize() (options, error) {
	if o.Rounds <= 0 {
		o.Rounds = 5
		if o.Quick {
			o.Rounds = 2
		}
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
		if o.Quick {
			o.Duration = 2 * time.Second
		}
	}
	// wrk takes whole seconds.
	o.Duration = max(time.Second, o.Duration.Round(time.Second))
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Warmup > 0 {
		o.Warmup = max(time.Second, o.Warmup.Round(time.Second))
	}
	if o.WSIdleN <= 0 {
		o.WSIdleN = 10000
		if o.Quick {
			o.WSIdleN = 1000
		}
	}
	if len(o.Scenarios) == 0 {
		for _, s := range scenarioDefs {
			o.Scenarios = append(o.Scenarios, s.id)
		}
	}
	for _, id := range o.Scenarios {
		if scenarioByID(id) == nil {
			return o, fmt.Errorf("unknown scenario %d (1-%d)", id, len(scenarioDefs))
		}
	}
	slices.Sort(o.Scenarios)
	o.Scenarios = slices.Compact(o.Scenarios)
	if len(o.Proxies) == 0 {
		o.Proxies = allProxies
	}
	for _, p := range o.Proxies {
		if !slices.Contains(allProxies, p) {
			return o, fmt.Errorf("unknown proxy %q (%s)", p, strings.Join(allProxies, ", "))
		}
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.Root == "" {
		root, err := findRoot()
		if err != nil {
			return o, err
		}
		o.Root = root
	}
	return o, nil
}

// findRoot walks up from the working directory to the module's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/gatehouse-proxy/gatehouse\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the gatehouse module (no go.mod found)")
		}
		dir = parent
	}
}

// ---------------------------------------------------------------- results

type metric struct {
	key, label  string
	lowerBetter bool
	format      string
}

type scenarioDef struct {
	id       int
	title    string
	metrics  []metric
	baseline string // row the ratio column divides by
}

var (
	mRPS   = metric{"rps", "req/s", false, "%.0f"}
	mMiBs  = metric{"mibs", "MiB/s", false, "%.1f"}
	mHS    = metric{"hs", "handshakes/s", false, "%.0f"}
	mKiB   = metric{"kib", "KiB per idle tunnel", true, "%.1f"}
	mP50   = metric{"p50", "p50 ms", true, "%.2f"}
	mP99   = metric{"p99", "p99 ms", true, "%.2f"}
	rowH3  = "gatehouse (h3)"
	rowH2  = "gatehouse (h2)"
	nginxB = "nginx"
)

var scenarioDefs = []scenarioDef{
	{1, "HTTP/1.1 keep-alive, 100-byte responses, 64 connections", []metric{mRPS}, nginxB},
	{2, "1 MiB responses over HTTP/1.1, 16 connections", []metric{mMiBs}, nginxB},
	{3, "HTTPS + HTTP/2, 64 connections x 10 streams, 100-byte responses", []metric{mRPS}, nginxB},
	{4, "TLS handshakes: a new HTTPS connection per request, 16 connections", []metric{mHS}, nginxB},
	{5, "Cache hits: cacheable 100-byte response, HTTP/1.1, 64 connections", []metric{mRPS}, nginxB},
	{6, "Memory per idle WebSocket tunnel (Gatehouse only)", []metric{mKiB}, ""},
	{7, "HTTP/3 vs HTTP/2 (Gatehouse only), 100-byte responses", []metric{mRPS}, rowH2},
	{8, "Latency at half of each proxy's scenario-1 throughput (open loop, HTTP/1.1, 64 connections)", []metric{mP50, mP99}, nginxB},
}

func scenarioByID(id int) *scenarioDef {
	for i := range scenarioDefs {
		if scenarioDefs[i].id == id {
			return &scenarioDefs[i]
		}
	}
	return nil
}

// sample is one measured run of one row.
type sample struct {
	values   map[string]float64
	extra    map[string]float64
	notes    []string
	err      error
	proxyCPU float64 // % of one CPU; NaN when unknown
	loadCPU  float64 // load generator + origin, % of one CPU; NaN when unknown
}

func newSample() sample {
	return sample{values: map[string]float64{}, extra: map[string]float64{}, proxyCPU: math.NaN(), loadCPU: math.NaN()}
}

func errSample(err error) sample {
	s := newSample()
	s.err = err
	return s
}

// cell aggregates the rounds of one row of one scenario.
type cell struct {
	values            map[string][]float64
	extra             map[string][]float64
	proxyCPU, loadCPU []float64
	notes             []string
	errs              []string
	na                string
	rounds            int
}

func (c *cell) add(s sample) {
	c.rounds++
	for _, n := range s.notes {
		if !slices.Contains(c.notes, n) {
			c.notes = append(c.notes, n)
		}
	}
	if s.err != nil {
		c.errs = append(c.errs, s.err.Error())
		return
	}
	for k, v := range s.values {
		c.values[k] = append(c.values[k], v)
	}
	for k, v := range s.extra {
		c.extra[k] = append(c.extra[k], v)
	}
	if !math.IsNaN(s.proxyCPU) {
		c.proxyCPU = append(c.proxyCPU, s.proxyCPU)
	}
	if !math.IsNaN(s.loadCPU) {
		c.loadCPU = append(c.loadCPU, s.loadCPU)
	}
}

// ok reports whether the cell has at least one successful round.
func (c *cell) ok() bool {
	for _, v := range c.values {
		if len(v) > 0 {
			return true
		}
	}
	return false
}

type scenarioResult struct {
	def     scenarioDef
	command string // how it was measured
	rows    []string
	cells   map[string]*cell
	notes   []string
}

func (r *scenarioResult) cell(row string) *cell {
	c := r.cells[row]
	if c == nil {
		c = &cell{values: map[string][]float64{}, extra: map[string][]float64{}}
		r.cells[row] = c
		if !slices.Contains(r.rows, row) {
			r.rows = append(r.rows, row)
		}
	}
	return c
}

// report is the outcome of run.
type report struct {
	Tables    string // the Markdown tables, printed on stdout
	File      string // the whole report file
	OutPath   string // where File was written ("" = nowhere)
	Results   []*scenarioResult
	Leftovers []string // processes still alive at the end (should be none)
	Elapsed   time.Duration
}

// ---------------------------------------------------------------- harness

type harness struct {
	o     options
	dir   string
	procs *procs

	gatehouse, loadgen, wsidle string // built binaries ("" if the build failed)
	loadgenErr, wsidleErr      error
	tools                      map[string]string // name -> path ("" = missing)

	pin                bool
	loadCPU, proxyCPU  int
	pinNote            string
	nofile             uint64
	maxConns           int
	cert               certFiles
	origin             *child
	originPort         int
	originDir          string
	configs            []string // "### name (variant)" + config, for the report
	s1Median           map[string]float64
	s1Calibrated       bool
	buildTimes         []string
	machine            []string
	scenario4Resumable map[string]string
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.o.Log, "bench: "+format+"\n", args...)
}

// run is the whole benchmark: build, configure, start, measure, stop,
// render; it leaves no process behind. The report file is written to o.Out.
func run(ctx context.Context, o options) (*report, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	h := &harness{o: o, procs: newProcs(), s1Median: map[string]float64{}, scenario4Resumable: map[string]string{}}
	h.dir, err = os.MkdirTemp("", "gatehouse-bench-")
	if err != nil {
		return nil, err
	}
	// nginx started as root runs its workers as nobody: they must reach
	// the cache directory inside (MkdirTemp makes it 0700).
	if err := os.Chmod(h.dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		h.procs.stopAll()
		if o.Keep {
			h.logf("kept %s", h.dir)
		} else {
			os.RemoveAll(h.dir)
		}
	}()
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	rep := &report{}
	results := map[int]*scenarioResult{}
	for _, id := range o.Scenarios {
		def := *scenarioByID(id)
		results[id] = &scenarioResult{def: def, cells: map[string]*cell{}}
	}
	runErr := h.runAll(ctx, results)
	h.procs.stopAll()
	rep.Leftovers = h.procs.leftovers()
	for _, id := range o.Scenarios {
		rep.Results = append(rep.Results, results[id])
	}
	rep.Elapsed = time.Since(start)
	rep.Tables = h.renderTables(rep.Results)
	// An interrupted run prints what it has but does not overwrite the
	// report file with partial results.
	if o.Out != "" && runErr == nil {
		old, _ := os.ReadFile(o.Out)
		rep.File = h.renderFile(rep, string(old))
		if err := os.WriteFile(o.Out, []byte(rep.File), 0o644); err != nil {
			return rep, err
		}
		rep.OutPath = o.Out
	}
	if runErr != nil {
		return rep, runErr
	}
	if len(rep.Leftovers) > 0 {
		return rep, fmt.Errorf("processes left behind: %s", strings.Join(rep.Leftovers, "; "))
	}
	return rep, nil
}

func (h *harness) setup(ctx context.Context) error {
	var err error
	if h.nofile, err = raiseNoFile(); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE: %w", err)
	}
	// Two descriptors per proxied connection, some spare.
	h.maxConns = int(min(h.nofile, 1<<20)-200) / 2

	h.tools = map[string]string{}
	for _, t := range []string{"nginx", "haproxy", "caddy", "wrk", "h2load", "taskset", "go"} {
		h.tools[t] = lookTool(t)
	}
	if h.tools["go"] == "" {
		return errors.New("go not found in PATH")
	}
	if h.tools["nginx"] == "" {
		return errors.New("nginx not found: it is also the origin server (run bench/run to install it)")
	}

	cpus := allowedCPUs()
	switch {
	case len(cpus) < 2:
		h.pinNote = fmt.Sprintf("none: only %d CPU available, proxy, load generator and origin share it", max(len(cpus), 1))
	case h.tools["taskset"] == "":
		h.pinNote = "none: taskset not found (install util-linux)"
	default:
		h.pin, h.loadCPU, h.proxyCPU = true, cpus[0], cpus[1]
		h.pinNote = fmt.Sprintf("proxy under test on CPU %d; load generator and origin on CPU %d (taskset)", h.proxyCPU, h.loadCPU)
		if len(cpus) > 2 {
			h.pinNote += fmt.Sprintf("; %d other CPUs unused", len(cpus)-2)
		}
	}
	h.logf("temp dir %s; pinning: %s", h.dir, h.pinNote)

	// Builds: always fresh, so that concurrent changes to the gateway are
	// measured. -buildvcs=false: no git invocation.
	build := func(out, pkg string) error {
		t0 := time.Now()
		r, err := h.procs.runToolIn(ctx, h.o.Root, 10*time.Minute, []string{h.tools["go"], "build", "-buildvcs=false", "-o", out, pkg}, nil)
		if err == nil {
			h.buildTimes = append(h.buildTimes, fmt.Sprintf("%s %.1fs", pkg, time.Since(t0).Seconds()))
		} else if msg := strings.TrimSpace(r.stderr); msg != "" {
			err = fmt.Errorf("go build %s: %s", pkg, abbreviate(msg, 600))
		}
		return err
	}
	h.logf("building the gateway and the load generator ...")
	gh := filepath.Join(h.dir, "gatehouse")
	if err := build(gh, "./cmd/gatehouse"); err != nil {
		return err
	}
	h.gatehouse = gh
	lg := filepath.Join(h.dir, "loadgen")
	if h.loadgenErr = build(lg, "./bench/loadgen"); h.loadgenErr == nil {
		h.loadgen = lg
	} else {
		h.logf("loadgen: %v", h.loadgenErr)
	}
	if slices.Contains(h.o.Scenarios, 6) {
		ws := filepath.Join(h.dir, "wsidle")
		if h.wsidleErr = build(ws, "./bench/wsidle"); h.wsidleErr == nil {
			h.wsidle = ws
		}
	}

	if h.cert, err = writeCert(h.dir); err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if err := h.startOrigin(ctx); err != nil {
		return err
	}
	h.machine = h.describeMachine(ctx)
	return nil
}

// lookTool finds a program in PATH or in the sbin directories a non-root
// PATH may lack.
func lookTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/local/go/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// pinned prefixes argv with taskset when pinning is on.
func (h *harness) pinned(cpu int, argv []string) []string {
	if !h.pin {
		return argv
	}
	return append([]string{h.tools["taskset"], "-c", strconv.Itoa(cpu)}, argv...)
}

// freePorts returns a loopback port free for TCP, and for UDP too when udp
// is set (Gatehouse and Caddy serve HTTP/3 on the HTTPS port).
func freePort(udp bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if udp {
			u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				l.Close()
				continue
			}
			u.Close()
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("no free port")
}

func (h *harness) startOrigin(ctx context.Context) error {
	h.originDir = filepath.Join(h.dir, "origin")
	if err := os.MkdirAll(filepath.Join(h.originDir, "www"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.originDir, "www", "1m"), bigBody, 0o644); err != nil {
		return err
	}
	port, err := freePort(false)
	if err != nil {
		return err
	}
	h.originPort = port
	conf := filepath.Join(h.originDir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(originConfig(h.originDir, port, min(h.maxConns, 16384))), 0o644); err != nil {
		return err
	}
	argv := []string{h.tools["nginx"], "-p", h.originDir, "-c", conf, "-e", filepath.Join(h.originDir, "error.log")}
	h.origin, err = h.procs.start("origin", h.pinned(h.loadCPU, argv), nil, filepath.Join(h.originDir, "stdout.log"))
	if err != nil {
		return err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/small", port)
	if err := waitHTTP(ctx, h.origin, url, 15*time.Second); err != nil {
		return fmt.Errorf("origin nginx: %w\n%s", err, readTail(filepath.Join(h.originDir, "error.log"), 2000))
	}
	body, err := get(ctx, plainClient(), url)
	if err != nil || body != smallBody {
		return fmt.Errorf("origin /small: %q, %v", abbreviate(body, 120), err)
	}
	return nil
}

func readTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// originCachedCount is how many /cached requests reached the origin.
func (h *harness) originCachedCount() int64 {
	b, _ := os.ReadFile(filepath.Join(h.originDir, "cached.log"))
	return int64(bytes.Count(b, []byte("\n")))
}

// ---------------------------------------------------------------- HTTP checks

func plainClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableCompression: true}}
}

// tlsClient talks HTTP/2 to localhost:port on 127.0.0.1, verifying the
// bench certificate.
func (h *harness) tlsClient(port int) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
		},
		TLSClientConfig:    &tls.Config{RootCAs: h.cert.pool, ServerName: "localhost"},
		ForceAttemptHTTP2:  true,
		DisableCompression: true,
	}}
}

// get returns the body of a 200 response.
func get(ctx context.Context, c *http.Client, url string) (string, error) {
	body, _, err := getResp(ctx, c, url)
	return body, err
}

func getResp(ctx context.Context, c *http.Client, url string) (string, *http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", resp, err
	}
	if resp.StatusCode != 200 {
		return string(b), resp, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return string(b), resp, nil
}

// waitHTTP polls url until it answers 200, the child exits or timeout.
func waitHTTP(ctx context.Context, c *child, url string, timeout time.Duration) error {
	client := plainClient()
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if c.exited() {
			return fmt.Errorf("exited during start-up: %s", abbreviate(c.logTail(1500), 1500))
		}
		if _, last = get(ctx, client, url); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ---------------------------------------------------------------- proxies

// instance is one running proxy with one configuration variant.
type instance struct {
	proxy, variant      string
	httpPort, httpsPort int
	proc                *child
	err                 error // start or verification failure
	na                  bool
}

func (h *harness) startProxy(ctx context.Context, name, variant string) *instance {
	in := &instance{proxy: name, variant: variant}
	dir := filepath.Join(h.dir, name+"-"+variant)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		in.err = err
		return in
	}
	var err error
	if in.httpPort, err = freePort(false); err == nil {
		in.httpsPort, err = freePort(true)
	}
	if err != nil {
		in.err = err
		return in
	}
	env := proxyEnv{dir: dir, httpPort: in.httpPort, httpsPort: in.httpsPort, originPort: h.originPort,
		cert: h.cert, maxConns: h.maxConns, cache: variant == variantCache}
	var l proxyLaunch
	switch name {
	case "gatehouse":
		l, err = gatehouseConfig(h.gatehouse, env)
	case "nginx":
		l, err = nginxConfig(h.tools["nginx"], env)
	case "haproxy":
		if h.tools["haproxy"] == "" {
			err = errors.New("haproxy not installed")
			break
		}
		l, err = haproxyConfig(h.tools["haproxy"], env)
	case "caddy":
		if h.tools["caddy"] == "" {
			err = errors.New("caddy not installed")
			break
		}
		l, err = caddyConfig(h.tools["caddy"], env, func(argv []string) (string, error) {
			r, err := h.procs.runTool(ctx, time.Minute, argv, nil)
			return r.stdout, err
		})
	}
	if errors.Is(err, errNA) {
		in.na = true
		return in
	}
	if err != nil {
		in.err = err
		return in
	}
	h.configs = append(h.configs, fmt.Sprintf("#### %s (%s)\n\n```\n%s```\n", name, variant, l.config))
	if l.validate != nil {
		r, err := h.procs.runTool(ctx, time.Minute, l.validate, l.env)
		if err != nil {
			in.err = fmt.Errorf("invalid config: %s", abbreviate(r.stdout+r.stderr+" "+err.Error(), 1500))
			h.logf("%s (%s): %v", name, variant, in.err)
			return in
		}
	}
	in.proc, err = h.procs.start(name, h.pinned(h.proxyCPU, l.argv), l.env, filepath.Join(dir, "stdout.log"))
	if err != nil {
		in.err = err
		return in
	}
	if err := waitHTTP(ctx, in.proc, fmt.Sprintf("http://127.0.0.1:%d/small", in.httpPort), 30*time.Second); err != nil {
		in.err = fmt.Errorf("start: %w", err)
	} else if err := h.verify(ctx, in); err != nil {
		in.err = fmt.Errorf("verification: %w", err)
	}
	if in.err != nil {
		h.logf("!!! %s (%s) FAILED: %v", name, variant, in.err)
		h.procs.stop(in.proc, 5*time.Second)
	}
	return in
}

// verify checks that the proxy returns the origin's exact bodies on every
// path over HTTP/1.1 and HTTPS + HTTP/2, and forwards the client headers.
func (h *harness) verify(ctx context.Context, in *instance) error {
	pc, tc := plainClient(), h.tlsClient(in.httpsPort)
	defer pc.CloseIdleConnections()
	defer tc.CloseIdleConnections()
	bases := []struct {
		c           *http.Client
		base, proto string
		host        string
	}{
		{pc, fmt.Sprintf("http://127.0.0.1:%d", in.httpPort), "http", fmt.Sprintf("127.0.0.1:%d", in.httpPort)},
		{tc, fmt.Sprintf("https://localhost:%d", in.httpsPort), "https", fmt.Sprintf("localhost:%d", in.httpsPort)},
	}
	want := map[string]string{"/small": smallBody, "/cached": cachedBody, "/1m": string(bigBody)}
	deadline := time.Now().Add(20 * time.Second)
	for _, b := range bases {
		for _, path := range []string{"/small", "/1m", "/cached", "/hdrs"} {
			var body string
			var resp *http.Response
			var err error
			for { // the TLS listener may come up after the plain one
				body, resp, err = getResp(ctx, b.c, b.base+path)
				if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				return fmt.Errorf("%s%s: %w (body %q)", b.base, path, err, abbreviate(body, 100))
			}
			if b.proto == "https" && resp.Proto != "HTTP/2.0" {
				return fmt.Errorf("%s%s: served over %s, want HTTP/2.0", b.base, path, resp.Proto)
			}
			if path == "/hdrs" {
				wantH := fmt.Sprintf("host=%s|", b.host)
				if !strings.HasPrefix(body, wantH) || !strings.Contains(body, "|xff=127.0.0.1") ||
					!strings.Contains(body, "|xrip=127.0.0.1|") || !strings.HasSuffix(body, "|xfp="+b.proto+"\n") {
					return fmt.Errorf("%s/hdrs: forwarded headers %q, want %shost, X-Forwarded-For, X-Real-IP 127.0.0.1, X-Forwarded-Proto %s",
						b.base, strings.TrimSpace(body), wantH, b.proto)
				}
				continue
			}
			if body != want[path] {
				return fmt.Errorf("%s%s: body differs from the origin's (%d bytes, want %d)", b.base, path, len(body), len(want[path]))
			}
		}
	}
	return nil
}

// tlsResumption reports whether the proxy resumes a TLS session for a
// client that offers one (the second of two connections).
func (h *harness) tlsResumption(port int) (bool, error) {
	cfg := &tls.Config{RootCAs: h.cert.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"},
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	var resumed bool
	for range 2 {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
		if err != nil {
			return false, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		resumed = c.ConnectionState().DidResume
		// Read the response to the end: TLS 1.3 tickets arrive after the
		// handshake.
		fmt.Fprintf(c, "GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
		io.Copy(io.Discard, c)
		c.Close()
	}
	return resumed, nil
}

func (h *harness) startAll(ctx context.Context, variant string) map[string]*instance {
	insts := map[string]*instance{}
	for _, p := range h.o.Proxies {
		h.logf("starting %s (%s config) ...", p, variant)
		insts[p] = h.startProxy(ctx, p, variant)
	}
	return insts
}

func (h *harness) stopAll(insts map[string]*instance) {
	var wg sync.WaitGroup
	for _, in := range insts {
		if in.proc != nil {
			wg.Add(1)
			go func() { defer wg.Done(); h.procs.stop(in.proc, 5*time.Second) }()
		}
	}
	wg.Wait()
}

// ---------------------------------------------------------------- measuring

// measure runs fn against a live instance and adds CPU use and new TCP
// connections to its sample. fn returns the sample and the CPU time of the
// load tool.
func (h *harness) measure(ctx context.Context, in *instance, fn func(ctx context.Context) (sample, time.Duration)) sample {
	if in.err != nil {
		return errSample(in.err)
	}
	if in.proc == nil {
		return errSample(errors.New("not started"))
	}
	if in.proc.exited() {
		in.err = fmt.Errorf("proxy exited: %s", abbreviate(in.proc.logTail(300), 300))
		return errSample(in.err)
	}
	p0, o0 := groupCPU(in.proc.pgid), groupCPU(h.origin.pgid)
	c0, cok := tcpActiveOpens()
	sys0, sok := systemCPU()
	t0 := time.Now()
	s, toolCPU := fn(ctx)
	wall := time.Since(t0)
	if in.proc.exited() {
		in.err = fmt.Errorf("proxy died during the run: %s", abbreviate(in.proc.logTail(300), 300))
		s.err = in.err
		return s
	}
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	proxyCPU, loadCPU := groupCPU(in.proc.pgid)-p0, toolCPU+groupCPU(h.origin.pgid)-o0
	s.proxyCPU, s.loadCPU = pct(proxyCPU), pct(loadCPU)
	if sys1, ok := systemCPU(); ok && sok {
		// Everything else the machine ran meanwhile: other benchmarks or
		// builds compete with the proxy and the load generator for the CPUs.
		s.extra["other_cpu"] = max(0, pct(sys1-sys0-proxyCPU-loadCPU))
	}
	if c1, ok := tcpActiveOpens(); ok && cok {
		s.extra["new_conns"] = float64(c1 - c0)
	}
	return s
}

// toolTimeout bounds one tool run.
func (h *harness) toolTimeout(d time.Duration) time.Duration { return d + 60*time.Second }

func secs(d time.Duration) string { return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds())) }

// wrkRun runs wrk on the load CPU and turns its output into a sample with
// the given metric (rps, or MiB/s with mibs).
func (h *harness) wrkRun(ctx context.Context, conns int, d time.Duration, url string, key string, header string) (sample, time.Duration) {
	s := newSample()
	if h.tools["wrk"] == "" {
		s.err = errors.New("wrk not installed")
		return s, 0
	}
	argv := []string{h.tools["wrk"], "-t1", fmt.Sprintf("-c%d", conns), "-d" + secs(d)}
	if header != "" {
		argv = append(argv, "-H", header)
	}
	argv = append(argv, url)
	r, err := h.procs.runTool(ctx, h.toolTimeout(d), h.pinned(h.loadCPU, argv), nil)
	if err != nil {
		s.err = err
		return s, r.cpu
	}
	w, err := parseWrk(r.stdout)
	if err != nil {
		s.err = err
		return s, r.cpu
	}
	switch {
	case w.requests == 0:
		s.err = errors.New("no request completed")
	case float64(w.non2xx) > 0.01*float64(w.requests):
		s.err = fmt.Errorf("%d of %d responses not 2xx/3xx", w.non2xx, w.requests)
	}
	s.extra["requests"] = float64(w.requests)
	s.extra["sock_errors"] = float64(w.sockErrors)
	s.extra["non2xx"] = float64(w.non2xx)
	if key == "mibs" {
		s.values[key] = w.bytesPerS / (1 << 20)
	} else {
		s.values[key] = w.rps
	}
	return s, r.cpu
}

func (h *harness) h2loadRun(ctx context.Context, in *instance, d time.Duration) (sample, time.Duration) {
	s := newSample()
	if h.tools["h2load"] == "" {
		s.err = errors.New("h2load not installed")
		return s, 0
	}
	// SNI and :authority are "localhost"; --connect-to pins the address to
	// 127.0.0.1 whatever localhost resolves to.
	argv := []string{h.tools["h2load"], "-t1", "-c64", "-m10", "-D", fmt.Sprintf("%dms", d.Milliseconds()),
		fmt.Sprintf("--connect-to=127.0.0.1:%d", in.httpsPort), fmt.Sprintf("https://localhost:%d/small", in.httpsPort)}
	r, err := h.procs.runTool(ctx, h.toolTimeout(d), h.pinned(h.loadCPU, argv), nil)
	if err != nil {
		s.err = err
		return s, r.cpu
	}
	res, err := parseH2load(r.stdout)
	if err != nil {
		s.err = err
		return s, r.cpu
	}
	bad := res.failed + res.errored + res.timeout
	switch {
	case res.proto != "" && res.proto != "h2":
		s.err = fmt.Errorf("negotiated %s, not h2", res.proto)
	case res.succeeded == 0:
		s.err = errors.New("no request succeeded")
	case float64(bad) > 0.01*float64(res.total):
		s.err = fmt.Errorf("%d of %d requests failed", bad, res.total)
	case float64(res.status2xx) < 0.99*float64(res.succeeded):
		s.err = fmt.Errorf("only %d of %d responses 2xx", res.status2xx, res.succeeded)
	}
	s.values["rps"] = res.rps
	s.extra["failed"] = float64(bad)
	s.extra["requests"] = float64(res.total)
	return s, r.cpu
}

func (h *harness) loadgenRun(ctx context.Context, d time.Duration, args ...string) (loadgenResult, sample, time.Duration) {
	s := newSample()
	if h.loadgen == "" {
		s.err = fmt.Errorf("loadgen not built: %v", abbreviate(fmt.Sprint(h.loadgenErr), 200))
		return loadgenResult{}, s, 0
	}
	argv := append([]string{h.loadgen}, args...)
	argv = append(argv, "-d", d.String())
	r, err := h.procs.runTool(ctx, h.toolTimeout(d+10*time.Second), h.pinned(h.loadCPU, argv), nil)
	if err != nil {
		s.err = err
		return loadgenResult{}, s, r.cpu
	}
	res, err := parseLoadgen(r.stdout)
	if err != nil {
		s.err = err
		return res, s, r.cpu
	}
	switch {
	case res.Requests == 0:
		s.err = fmt.Errorf("no request succeeded (%d errors)", res.Errors)
	case float64(res.Errors) > 0.01*float64(res.Requests+res.Errors):
		s.err = fmt.Errorf("%d errors, %d requests", res.Errors, res.Requests)
	}
	s.extra["errors"] = float64(res.Errors)
	s.extra["requests"] = float64(res.Requests)
	return res, s, r.cpu
}

// rounds runs one(row, duration) for every row, rounds times, interleaved:
// round r starts at row r (mod rows) so no proxy always goes first. A
// warm-up run per row precedes the first round when configured.
func (h *harness) rounds(ctx context.Context, res *scenarioResult, rows []string, one func(ctx context.Context, row string, d time.Duration) sample) error {
	for _, row := range rows {
		res.cell(row)
	}
	if h.o.Warmup > 0 {
		for _, row := range rows {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			one(ctx, row, h.o.Warmup)
		}
	}
	for r := 0; r < h.o.Rounds; r++ {
		for i := range rows {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			row := rows[(i+r)%len(rows)]
			s := one(ctx, row, h.o.Duration)
			res.cell(row).add(s)
			h.logf("  [%d] round %d/%d %-15s %s", res.def.id, r+1, h.o.Rounds, row, sampleSummary(res.def, s))
		}
	}
	return nil
}

func sampleSummary(def scenarioDef, s sample) string {
	if s.err != nil {
		return "error: " + s.err.Error()
	}
	var parts []string
	for _, m := range def.metrics {
		parts = append(parts, fmt.Sprintf(m.format+" %s", s.values[m.key], m.label))
	}
	if !math.IsNaN(s.proxyCPU) {
		parts = append(parts, fmt.Sprintf("(CPU: proxy %.0f%%, load %.0f%%, other %.0f%%)", s.proxyCPU, s.loadCPU, s.extra["other_cpu"]))
	}
	return strings.Join(parts, ", ")
}

// runAll runs the selected scenarios: those on the plain configuration
// with one set of proxies, then the cache scenario with the cache variants,
// then the WebSocket one.
func (h *harness) runAll(ctx context.Context, results map[int]*scenarioResult) error {
	has := func(id int) bool { return results[id] != nil }
	if has(1) || has(2) || has(3) || has(4) || has(7) || has(8) {
		insts := h.startAll(ctx, variantPlain)
		err := func() error {
			defer h.stopAll(insts)
			for _, id := range []int{1, 2, 3, 4, 7, 8} {
				if !has(id) {
					continue
				}
				if err := h.runScenario(ctx, results[id], insts); err != nil {
					return err
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	if has(5) {
		insts := h.startAll(ctx, variantCache)
		err := h.runScenario(ctx, results[5], insts)
		h.stopAll(insts)
		if err != nil {
			return err
		}
	}
	if has(6) {
		if err := h.runScenario(ctx, results[6], nil); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) runScenario(ctx context.Context, res *scenarioResult, insts map[string]*instance) error {
	d := h.o.Duration
	h.logf("scenario %d: %s", res.def.id, res.def.title)
	proxies := h.o.Proxies
	switch res.def.id {
	case 1:
		res.command = "`wrk -t1 -c64 -d" + secs(d) + " http://127.0.0.1:PORT/small`"
		err := h.rounds(ctx, res, proxies, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				return h.wrkRun(ctx, 64, d, fmt.Sprintf("http://127.0.0.1:%d/small", in.httpPort), "rps", "")
			})
		})
		for _, p := range proxies {
			if c := res.cells[p]; c != nil && c.ok() {
				h.s1Median[p] = median(c.values["rps"])
			}
		}
		return err
	case 2:
		res.command = "`wrk -t1 -c16 -d" + secs(d) + " http://127.0.0.1:PORT/1m`, MiB/s from wrk's Transfer/sec"
		return h.rounds(ctx, res, proxies, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				return h.wrkRun(ctx, 16, d, fmt.Sprintf("http://127.0.0.1:%d/1m", in.httpPort), "mibs", "")
			})
		})
	case 3:
		res.command = "`h2load -t1 -c64 -m10 -D " + secs(d) + " --connect-to=127.0.0.1:PORT https://localhost:PORT/small` (SNI localhost, ALPN h2)"
		res.notes = append(res.notes, "Up to 640 requests are in flight, against the 1024 idle origin connections every proxy keeps (nginx with 256 reconnected ~2,000 times per second, which is why the pool is sized above the concurrency); \"new TCP conns\" counts them (system-wide connect() calls, the 64 client connections included).")
		return h.rounds(ctx, res, proxies, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) { return h.h2loadRun(ctx, in, d) })
		})
	case 4:
		// wrk rather than h2load --h1: it runs for a fixed time with a fixed
		// number of connections, and on "Connection: close" it reconnects
		// at once (one TCP + TLS handshake per request). Both OpenSSL-based
		// tools resume TLS sessions (wrk keeps the session across
		// SSL_clear, h2load reuses it too; checked with nginx's
		// $ssl_session_reused): after the first connection of each slot
		// every handshake is a TLS 1.3 PSK resumption with (EC)DHE key
		// exchange, without certificate signature.
		res.command = "`wrk -t1 -c16 -d" + secs(d) + " -H 'Connection: close' https://localhost:PORT/small` (one connection per request)"
		res.notes = append(res.notes,
			"wrk (OpenSSL) resumes TLS sessions: after the first connection of each of the 16 slots, every handshake is a TLS 1.3 session resumption (PSK with X25519 key exchange, no certificate signature). This measures returning clients, not first visits. \"resumes\" says whether the proxy accepted a resumption from a Go client too.",
			"\"conns/req\" = new TCP connections (system-wide connect() calls) per completed request: about 1 means the proxy closed every connection and wrk reconnected.")
		for _, p := range proxies {
			if in := insts[p]; in != nil && in.err == nil && in.proc != nil {
				if ok, err := h.tlsResumption(in.httpsPort); err == nil {
					h.scenario4Resumable[p] = map[bool]string{true: "yes", false: "no"}[ok]
				} else {
					h.scenario4Resumable[p] = "probe failed: " + abbreviate(err.Error(), 80)
				}
			}
		}
		return h.rounds(ctx, res, proxies, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			s := h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				s, cpu := h.wrkRun(ctx, 16, d, fmt.Sprintf("https://localhost:%d/small", in.httpsPort), "hs", "Connection: close")
				return s, cpu
			})
			if s.err == nil {
				if n, ok := s.extra["new_conns"]; ok && s.extra["requests"] > 0 {
					s.extra["conns_per_req"] = n / s.extra["requests"]
					if s.extra["conns_per_req"] < 0.5 {
						s.err = fmt.Errorf("connections were kept alive (%.2f new connections per request)", s.extra["conns_per_req"])
					}
				}
			}
			return s
		})
	case 5:
		res.command = "`wrk -t1 -c64 -d" + secs(d) + " http://127.0.0.1:PORT/cached` after one warming request, with the cache variant of each config"
		res.notes = append(res.notes, "\"origin reqs\" is how many /cached requests reached the origin during the measured runs (from a log on the origin): 0 means every response came from the proxy's cache.")
		var rows []string
		for _, p := range proxies {
			if c := res.cell(p); insts[p].na {
				c.na = "n/a: no cache module in Debian's Caddy 2.6"
			} else {
				rows = append(rows, p)
			}
		}
		return h.rounds(ctx, res, rows, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				url := fmt.Sprintf("http://127.0.0.1:%d/cached", in.httpPort)
				c := plainClient()
				_, _ = get(ctx, c, url) // warm the cache
				c.CloseIdleConnections()
				before := h.originCachedCount()
				s, cpu := h.wrkRun(ctx, 64, d, url, "rps", "")
				origin := h.originCachedCount() - before
				s.extra["origin_reqs"] = float64(origin)
				if s.err == nil && float64(origin) > 0.01*s.extra["requests"] {
					s.err = fmt.Errorf("not served from the cache: the origin saw %d of %.0f requests", origin, s.extra["requests"])
				}
				return s, cpu
			})
		})
	case 6:
		return h.scenarioWSIdle(ctx, res)
	case 7:
		res.command = "`loadgen -proto h3|h2 -c 16 -m 10 -d " + secs(d) + " -insecure -url https://localhost:PORT/small` (bench/loadgen, quic-go / x/net/http2 clients), h3 and h2 runs interleaved"
		res.notes = append(res.notes, "Both rows use the same Go load generator, so the ratio compares the gateway's two stacks; the load generator (pinned to the other CPU) may itself be the limit, see load CPU.")
		in := insts["gatehouse"]
		if in == nil {
			res.notes = append(res.notes, "skipped: gatehouse not in --proxies")
			return nil
		}
		return h.rounds(ctx, res, []string{rowH3, rowH2}, func(ctx context.Context, row string, d time.Duration) sample {
			proto := "h3"
			if row == rowH2 {
				proto = "h2"
			}
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				res, s, cpu := h.loadgenRun(ctx, d, "-url", fmt.Sprintf("https://localhost:%d/small", in.httpsPort),
					"-proto", proto, "-c", "16", "-m", "10", "-insecure")
				s.values["rps"] = res.RPS
				return s, cpu
			})
		})
	case 8:
		res.command = "`loadgen -proto h1 -c 64 -rate R -d " + secs(d) + " -url http://127.0.0.1:PORT/small` with R = half the proxy's scenario-1 median; latency from the intended send time"
		res.notes = append(res.notes, "R is half of the proxy's scenario-1 throughput, which wrk (a C client) measured. The Go load generator shares its CPU with the origin: for the fastest proxies it may not keep up with R without queueing, which the open-loop latency then includes (flagged LOAD SIDE SATURATED; see load CPU).")
		if len(h.s1Median) == 0 || !slices.Contains(h.o.Scenarios, 1) {
			h.logf("scenario 8 needs scenario-1 throughput: measuring it (1 round)")
			res.notes = append(res.notes, "Scenario 1 was not selected: its throughput was measured with one unreported round first.")
			cal := &scenarioResult{def: *scenarioByID(1), cells: map[string]*cell{}}
			saved := h.o.Rounds
			h.o.Rounds = 1
			err := h.runScenario(ctx, cal, insts)
			h.o.Rounds = saved
			if err != nil {
				return err
			}
		}
		return h.rounds(ctx, res, proxies, func(ctx context.Context, p string, d time.Duration) sample {
			in := insts[p]
			rate := math.Floor(h.s1Median[p] / 2)
			if rate < 1 {
				return errSample(errors.New("no scenario-1 throughput to derive the rate from"))
			}
			return h.measure(ctx, in, func(ctx context.Context) (sample, time.Duration) {
				res, s, cpu := h.loadgenRun(ctx, d, "-url", fmt.Sprintf("http://127.0.0.1:%d/small", in.httpPort),
					"-proto", "h1", "-c", "64", "-rate", strconv.FormatFloat(rate, 'f', 0, 64))
				s.values["p50"], s.values["p99"] = res.P50, res.P99
				s.extra["rate"] = rate
				s.extra["achieved"] = res.RPS
				return s, cpu
			})
		})
	}
	return nil
}

// scenarioWSIdle runs bench/wsidle against the built gateway. It needs two
// descriptors per tunnel in the gateway, so -n is capped by RLIMIT_NOFILE
// (wsidle names the largest that fits when refusing).
func (h *harness) scenarioWSIdle(ctx context.Context, res *scenarioResult) error {
	n := h.o.WSIdleN
	res.command = fmt.Sprintf("`wsidle -n %d --gateway GATEHOUSE` (bench/wsidle; RSS growth of the gateway / N, see bench/README.md)", n)
	if !slices.Contains(h.o.Proxies, "gatehouse") {
		res.notes = append(res.notes, "skipped: gatehouse not in --proxies")
		return nil
	}
	if spare := uint64(64); uint64(2*n)+spare > h.nofile {
		fit := int((h.nofile - spare) / 2)
		res.notes = append(res.notes, fmt.Sprintf("RLIMIT_NOFILE hard limit is %d: -n %d does not fit (two descriptors per tunnel in the gateway), measured with -n %d, the largest wsidle accepts.", h.nofile, n, fit))
		n = fit
		res.command = fmt.Sprintf("`wsidle -n %d --gateway GATEHOUSE` (bench/wsidle; RSS growth of the gateway / N, see bench/README.md)", n)
	}
	res.notes = append(res.notes, "Not pinned: memory, not CPU, is measured. The gateway runs with its default GOMAXPROCS. No warm-up run (wsidle warms up by itself).")
	saved := h.o.Warmup
	h.o.Warmup = 0
	defer func() { h.o.Warmup = saved }()
	return h.rounds(ctx, res, []string{"gatehouse"}, func(ctx context.Context, _ string, _ time.Duration) sample {
		s := newSample()
		if h.wsidle == "" {
			s.err = fmt.Errorf("wsidle not built: %v", h.wsidleErr)
			return s
		}
		timeout := 3*time.Minute + time.Duration(n)*10*time.Millisecond
		r, err := h.procs.runTool(ctx, timeout, []string{h.wsidle, "-n", strconv.Itoa(n), "--gateway", h.gatehouse}, nil)
		if err != nil {
			if fit, ok := wsIdleMaxN(r.stdout + r.stderr); ok && fit < n {
				res.notes = append(res.notes, fmt.Sprintf("wsidle refused -n %d; measured with -n %d, the largest it names.", n, fit))
				n = fit
				r, err = h.procs.runTool(ctx, timeout, []string{h.wsidle, "-n", strconv.Itoa(n), "--gateway", h.gatehouse}, nil)
			}
		}
		if err != nil {
			s.err = err
			return s
		}
		kib, err := parseWSIdle(r.stdout)
		if err != nil {
			s.err = err
			return s
		}
		s.values["kib"] = kib
		s.extra["n"] = float64(n)
		return s
	})
}

// ---------------------------------------------------------------- stats

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
