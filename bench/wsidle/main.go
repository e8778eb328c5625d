// Command wsidle measures what an idle WebSocket tunnel costs Gatehouse in
// resident memory. It builds the gateway (or takes --gateway), starts a
// small coder/websocket echo backend in a child process, starts the gateway
// in front of it, opens N tunnels through it (each echoes one message, then
// stays idle), and reports the gateway's RSS (VmRSS from /proc) before and
// after, per tunnel.
//
//	go run ./bench/wsidle -n 10000
//
// Each tunnel holds two file descriptors in the gateway (client and backend
// side) and one in this process and in the backend, so -n is bounded by the
// open-files limit (RLIMIT_NOFILE; the soft limit is raised to the hard one).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

func main() {
	n := flag.Int("n", 10000, "idle tunnels to hold open")
	gateway := flag.String("gateway", "", "path to a gatehouse binary (default: go build ./cmd/gatehouse of this module)")
	settle := flag.Duration("settle", 3*time.Second, "wait after the last tunnel opened before measuring")
	concurrency := flag.Int("concurrency", 64, "handshakes in flight while opening tunnels")
	var env envList
	flag.Var(&env, "env", "KEY=VALUE added to the gateway's environment (repeatable), e.g. -env GOGC=50")
	backend := flag.Bool("backend", false, "internal: run the echo backend (used by the benchmark itself)")
	flag.Parse()

	if *backend {
		if err := runBackend(); err != nil {
			fmt.Fprintln(os.Stderr, "wsidle backend:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*n, *gateway, *settle, *concurrency, env); err != nil {
		fmt.Fprintln(os.Stderr, "wsidle:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- backend

// runBackend serves a coder/websocket echo server on a loopback port, prints
// "ADDR host:port" on stdout, and exits when stdin closes.
func runBackend() error {
	if _, err := raiseNoFile(); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, data); err != nil {
				return
			}
		}
	})}
	go srv.Serve(l)
	fmt.Printf("ADDR %s\n", l.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it or exits
	return nil
}

// ---------------------------------------------------------------- benchmark

// envList is a repeatable -env flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

func run(n int, gatewayBin string, settle time.Duration, concurrency int, env []string) error {
	if n < 1 {
		return errors.New("-n must be at least 1")
	}
	limit, err := raiseNoFile()
	if err != nil {
		return err
	}
	// The gateway inherits the limit; it needs two descriptors per tunnel
	// plus its listeners and runtime.
	const spare = 64
	if need := uint64(2*n + spare); need > limit {
		return fmt.Errorf("-n %d needs about %d open files in the gateway (two per tunnel) but RLIMIT_NOFILE allows %d here (hard limit); "+
			"the most this machine can hold is about -n %d", n, need, limit, (limit-spare)/2)
	}

	dir, err := os.MkdirTemp("", "wsidle-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if gatewayBin == "" {
		gatewayBin = filepath.Join(dir, "gatehouse")
		fmt.Printf("building the gateway ...\n")
		build := exec.Command("go", "build", "-o", gatewayBin, "github.com/gatehouse-proxy/gatehouse/cmd/gatehouse")
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/gatehouse: %w", err)
		}
	}

	// The backend runs in a child process so that its descriptors do not
	// count against this process's limit.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	be := exec.Command(self, "-backend")
	be.Stderr = os.Stderr
	beIn, err := be.StdinPipe()
	if err != nil {
		return err
	}
	beOut, err := be.StdoutPipe()
	if err != nil {
		return err
	}
	if err := be.Start(); err != nil {
		return fmt.Errorf("starting the echo backend: %w", err)
	}
	defer func() {
		beIn.Close()
		be.Process.Kill()
		be.Wait()
	}()
	line, err := bufio.NewReader(beOut).ReadString('\n')
	backendAddr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		return fmt.Errorf("echo backend did not report its address: %q, %v", line, err)
	}

	// The gateway: one plain-HTTP site proxying /ws to the backend.
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	httpsPort, err := freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`global:
  listen: 127.0.0.1
  http_port: %d
  https_port: %d
  http3: false
  admin: "off"
  data_dir: %q
sites:
  - hosts: ["*"]
    tls: off
    routes:
      - path: /ws
        upstream: [http://%s]
        websocket: {idle_timeout: 1h, max_tunnels: %d}
`, httpPort, httpsPort, filepath.Join(dir, "data"), backendAddr, n+100)
	cfgPath := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "gatehouse.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	gw := exec.Command(gatewayBin, "run", "--config", cfgPath, "--log-level", "warn")
	gw.Stdout, gw.Stderr = logFile, logFile
	gw.Env = append(os.Environ(), env...)
	if err := gw.Start(); err != nil {
		return fmt.Errorf("starting the gateway: %w", err)
	}
	exited := make(chan struct{})
	go func() { gw.Wait(); close(exited) }()
	defer func() {
		gw.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			gw.Process.Kill()
			<-exited
		}
	}()
	fail := func(err error) error {
		log, _ := os.ReadFile(logPath)
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		return fmt.Errorf("%w\ngateway log (tail):\n%s", err, log)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	if err := waitListening(addr, exited); err != nil {
		return fail(err)
	}
	pid := gw.Process.Pid
	url := "ws://" + addr + "/ws"
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}}

	ctx := context.Background()
	dial := func() (*websocket.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			return nil, err
		}
		if err := c.Write(dctx, websocket.MessageText, []byte("x")); err != nil {
			c.CloseNow()
			return nil, err
		}
		if _, got, err := c.Read(dctx); err != nil || string(got) != "x" {
			c.CloseNow()
			return nil, fmt.Errorf("echo: %q, %v", got, err)
		}
		return c, nil
	}

	// Warm up the code paths and pools, then let the gateway settle.
	for range 32 {
		c, err := dial()
		if err != nil {
			return fail(fmt.Errorf("warm-up tunnel: %w", err))
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	time.Sleep(time.Second)
	before, err := readStatus(pid)
	if err != nil {
		return fail(err)
	}
	sockBefore := countSockets(pid)

	fmt.Printf("opening %d tunnels through %s ...\n", n, url)
	conns := make([]*websocket.Conn, n)
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial()
			if err != nil {
				failed.Add(1)
				errOnce.Do(func() { firstErr = err })
				return
			}
			conns[i] = c
		}()
		if (i+1)%2000 == 0 {
			fmt.Printf("  %d started\n", i+1)
		}
	}
	wg.Wait()
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}
	defer closeAll()
	if f := failed.Load(); f > 0 {
		return fail(fmt.Errorf("%d of %d tunnels failed to open; first error: %v", f, n, firstErr))
	}
	opened := time.Since(start)

	// Idle: nothing moves. Sample RSS after the settle time.
	time.Sleep(settle)
	var samples []int64
	var after procStatus
	for i := range 3 {
		if i > 0 {
			time.Sleep(time.Second)
		}
		if after, err = readStatus(pid); err != nil {
			return fail(err)
		}
		samples = append(samples, after.RSS)
	}
	sockAfter := countSockets(pid)

	// The tunnels are still alive.
	for range min(100, n) {
		c := conns[rand.IntN(n)]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Write(cctx, websocket.MessageText, []byte("alive?"))
		if err == nil {
			_, _, err = c.Read(cctx)
		}
		cancel()
		if err != nil {
			return fail(fmt.Errorf("an idle tunnel died during the measurement: %w", err))
		}
	}

	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	rss := samples[len(samples)/2] // the median of the samples
	perTunnel := float64(rss-before.RSS) / float64(n) / 1024
	fmt.Printf("\n")
	if len(env) > 0 {
		fmt.Printf("gateway environment:    %s\n", strings.Join(env, " "))
	}
	fmt.Printf("idle tunnels:           %d (opened in %v, one 1-byte echo each, then idle %v+)\n", n, opened.Round(time.Millisecond), settle)
	fmt.Printf("gateway sockets:        %d before, %d after\n", sockBefore, sockAfter)
	fmt.Printf("gateway threads:        %d before, %d after\n", before.Threads, after.Threads)
	fmt.Printf("gateway VmRSS before:   %s\n", kib(before.RSS))
	fmt.Printf("gateway VmRSS after:    %s (samples %s)\n", kib(rss), kibs(samples))
	fmt.Printf("gateway VmHWM:          %s\n", kib(after.HWM))
	fmt.Printf("RSS per idle tunnel:    %.1f KiB\n", perTunnel)
	verdict := "met"
	if perTunnel > 16 {
		verdict = "NOT met"
	}
	fmt.Printf("goal <= 16 KiB/tunnel:  %s\n", verdict)
	return nil
}

// ---------------------------------------------------------------- helpers

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit, for this
// process and the children it starts, and returns it.
func raiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	// Always set it: Go raised the soft limit at start but gives child
	// processes (the gateway, the backend) the original one unless the
	// program itself called Setrlimit.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raising RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("the gateway exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the gateway is not accepting on %s after 15s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procStatus holds the fields of /proc/PID/status the benchmark reports.
type procStatus struct {
	RSS, HWM int64 // bytes
	Threads  int
}

func readStatus(pid int) (procStatus, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStatus{}, err
	}
	var st procStatus
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "VmRSS":
			st.RSS = v * 1024
		case "VmHWM":
			st.HWM = v * 1024
		case "Threads":
			st.Threads = int(v)
		}
	}
	if st.RSS == 0 {
		return st, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return st, nil
}

// countSockets counts the socket descriptors of pid.
func countSockets(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(link, "socket:") {
			n++
		}
	}
	return n
}

func kib(b int64) string { return fmt.Sprintf("%.1f MiB (%d KiB)", float64(b)/(1<<20), b/1024) }

func kibs(bs []int64) string {
	var parts []string
	for _, b := range bs {
		parts = append(parts, strconv.FormatInt(b/1024, 10))
	}
	return strings.Join(parts, ", ") + " KiB"
}
