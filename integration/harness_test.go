// Package integration holds Gatehouse's black-box tests: each test builds
// nothing itself, starts the gatehouse binary that TestMain built, talks to it
// over loopback with real clients and real httptest backends, and asserts the
// user-facing contract of /work/shared/CONFIG.md.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// gatehouseBin is the path of the binary built by TestMain.
var gatehouseBin string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "gatehouse-integration-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: integration: creating temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	gatehouseBin = filepath.Join(dir, "gatehouse")
	build := exec.Command("go", "build", "-o", gatehouseBin, "../cmd/gatehouse")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: integration: go build -o %s ../cmd/gatehouse: %v\n%s\n", gatehouseBin, err, out)
		return 1
	}
	return m.Run()
}

// ---------------------------------------------------------------- ports

var (
	portMu    sync.Mutex
	usedPorts = map[int]bool{}
)

// freePort returns a loopback TCP port that was free a moment ago and that no
// other caller in this process has been given.
func freePort(t testing.TB) int {
	t.Helper()
	return pickPort(t, "TCP", func(int) bool { return true })
}

// pickPort returns a loopback TCP port that was free a moment ago, that
// also passes ok, and that no other caller in this process has been given.
func pickPort(t testing.TB, what string, ok func(port int) bool) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("picking a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		good := ok(port)
		l.Close()
		if !good {
			continue
		}
		portMu.Lock()
		taken := usedPorts[port]
		usedPorts[port] = true
		portMu.Unlock()
		if !taken {
			return port
		}
	}
	t.Fatalf("no unused free %s port after 100 tries", what)
	return 0
}

// deadAddr returns a loopback address on which a socket is bound but not
// listening, so connecting is refused and nothing else can take the port
// until the test ends.
func deadAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// ---------------------------------------------------------------- processes

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Proc is a running gatehouse process.
type Proc struct {
	t      testing.TB
	Cmd    *exec.Cmd
	Stdout *syncBuffer
	Stderr *syncBuffer
	exited chan struct{} // closed once Wait returned
}

// startProc starts gatehouse with args and extra environment; the process is
// stopped (SIGTERM, then SIGKILL after 10s) when the test ends, and its output
// is logged if the test failed.
func startProc(t testing.TB, env []string, args ...string) *Proc {
	t.Helper()
	return startProcIn(t, "", env, args...)
}

// startProcIn starts the gateway with args in directory dir ("" for the
// test's own) with env added to the environment.
func startProcIn(t testing.TB, dir string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, Stdout: &syncBuffer{}, Stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.Cmd = exec.Command(gatehouseBin, args...)
	p.Cmd.Dir = dir
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout = p.Stdout
	p.Cmd.Stderr = p.Stderr
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("starting gatehouse %v in %q: %v", args, dir, err)
	}
	go func() {
		p.Cmd.Wait()
		close(p.exited)
	}()
	// Cleanups run last-in first-out: stop first, then dump the output.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gatehouse %v stdout:\n%s", args, p.Stdout.String())
			t.Logf("gatehouse %v stderr:\n%s", args, p.Stderr.String())
		}
	})
	t.Cleanup(p.Stop)
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		p.t.Errorf("sending %v to gatehouse: %v", sig, err)
	}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// WaitExit waits up to d for the process to exit and returns its exit code
// (-1 if killed by a signal); ok is false if it is still running.
func (p *Proc) WaitExit(d time.Duration) (code int, ok bool) {
	if p.Exited() {
		return p.Cmd.ProcessState.ExitCode(), true
	}
	select {
	case <-p.exited:
		return p.Cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return 0, false
	}
}

// Stop sends SIGTERM and waits up to 10s, then kills.
func (p *Proc) Stop() {
	if p.Exited() {
		return
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if _, ok := p.WaitExit(10 * time.Second); ok {
		return
	}
	p.t.Errorf("gatehouse did not exit within 10s of SIGTERM; killing it")
	p.Cmd.Process.Kill()
	<-p.exited
}

// waitListening polls addr until it accepts a TCP connection; it gives up
// if the process exits first or 10s pass.
func (p *Proc) waitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p.Exited() {
			return fmt.Errorf("gatehouse exited (code %d) before listening on %s\nstderr:\n%s",
				p.Cmd.ProcessState.ExitCode(), addr, p.Stderr.String())
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gatehouse not accepting on %s after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startServing starts the process that mk describes and waits until addr
// accepts connections. mk picks fresh ports on each call: a start that lost
// a port to another socket between picking and binding ("address already in
// use") is retried.
func startServing(t testing.TB, mk func() (env, args []string, addr string)) *Proc {
	t.Helper()
	return startServingIn(t, func() (string, []string, []string, string) {
		env, args, addr := mk()
		return "", env, args, addr
	})
}

// startServingIn is startServing for a process run in the directory mk
// names ("" for the test's own).
func startServingIn(t testing.TB, mk func() (dir string, env, args []string, addr string)) *Proc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		dir, env, args, addr := mk()
		p := startProcIn(t, dir, env, args...)
		err := p.waitListening(addr)
		if err == nil {
			return p
		}
		if attempt < 3 && p.Exited() && strings.Contains(p.Stderr.String(), "address already in use") {
			t.Logf("attempt %d lost its port, retrying: %v", attempt, err)
			continue
		}
		t.Fatal(err)
	}
}

// VmHWM returns the peak resident set size of the process in bytes.
func (p *Proc) VmHWM() int64 {
	p.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		p.t.Fatalf("reading /proc status: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				p.t.Fatalf("parsing VmHWM %q: %v", line, err)
			}
			return kb * 1024
		}
	}
	p.t.Fatalf("no VmHWM in /proc/%d/status", p.Pid())
	return 0
}

// LogLines parses stderr as JSON lines; lines that are not JSON objects are
// returned in bad.
func (p *Proc) LogLines() (objs []map[string]any, bad []string) {
	for line := range strings.Lines(p.Stderr.String()) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			bad = append(bad, line)
			continue
		}
		objs = append(objs, m)
	}
	return objs, bad
}

// WaitLog polls stderr until a JSON log line satisfies match, or fails after d.
func (p *Proc) WaitLog(d time.Duration, what string, match func(map[string]any) bool) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		objs, _ := p.LogLines()
		for _, o := range objs {
			if match(o) {
				return o
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no log line %s within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- gateway

// GatewayConfig describes one gateway to start. The harness writes the
// global: block itself (listen, ports, data_dir, and admin off unless
// Global sets admin:) followed by
// Global's lines, then Body.
type GatewayConfig struct {
	Global string // extra lines under global:, written unindented
	Body   string // top-level YAML after global: (upstreams:, sites:, ...)
	// Args builds the command line from the config path; nil means
	// run --config PATH.
	Args func(path string) []string
	Env  []string // extra environment variables
}

// Gateway is a running `gatehouse run`.
type Gateway struct {
	*Proc
	ConfigPath string
	DataDir    string
	HTTPPort   int
	HTTPSPort  int
	Addr       string // 127.0.0.1:http_port
	BaseURL    string // http://127.0.0.1:http_port
	Client     *http.Client
}

// globalBlock renders the global: section every test config uses.
func globalBlock(httpPort, httpsPort int, dataDir, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  listen: 127.0.0.1\n  http_port: %d\n  https_port: %d\n  data_dir: %q\n",
		httpPort, httpsPort, dataDir)
	if !strings.Contains(extra, "admin:") {
		b.WriteString("  admin: \"off\"\n") // parallel gateways would fight over 127.0.0.1:2019
	}
	for line := range strings.Lines(strings.TrimSpace(extra)) {
		b.WriteString("  " + line)
		if !strings.HasSuffix(line, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// writeGatewayConfig writes a full config into a fresh temp dir.
func writeGatewayConfig(t testing.TB, cfg GatewayConfig) (path, dataDir string, httpPort, httpsPort int) {
	t.Helper()
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	httpPort, httpsPort = freePort(t), freePort(t)
	text := globalBlock(httpPort, httpsPort, dataDir, cfg.Global) + strings.TrimLeft(cfg.Body, "\n")
	path = filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, dataDir, httpPort, httpsPort
}

// startGateway writes cfg, starts the gateway and waits until http_port
// accepts connections.
func startGateway(t testing.TB, cfg GatewayConfig) *Gateway {
	t.Helper()
	g := &Gateway{Client: newClient()}
	g.Proc = startServing(t, func() ([]string, []string, string) {
		g.ConfigPath, g.DataDir, g.HTTPPort, g.HTTPSPort = writeGatewayConfig(t, cfg)
		g.Addr = fmt.Sprintf("127.0.0.1:%d", g.HTTPPort)
		g.BaseURL = "http://" + g.Addr
		args := []string{"run", "--config", g.ConfigPath}
		if cfg.Args != nil {
			args = cfg.Args(g.ConfigPath)
		}
		return cfg.Env, args, g.Addr
	})
	t.Cleanup(g.Client.CloseIdleConnections) // runs before the stop
	return g
}

// newClient returns an HTTP/1.1 client that ignores proxy settings, never
// follows redirects and never asks for compression.
func newClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   16,
			DisableCompression:    true,
			ResponseHeaderTimeout: 30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Response is a fully read HTTP response.
type Response struct {
	Status  int
	Header  http.Header
	Trailer http.Header
	Body    string
}

// Get sends GET path with the given Host header and reads the whole response.
func (g *Gateway) Get(t testing.TB, host, path string) Response {
	t.Helper()
	return g.Do(t, host, http.MethodGet, path, nil, nil)
}

// Do sends one request through the gateway with a 30s deadline.
func (g *Gateway) Do(t testing.TB, host, method, path string, header http.Header, body io.Reader) Response {
	t.Helper()
	return doRequest(t, g.Client, host, method, g.BaseURL+path, header, body)
}

func doRequest(t testing.TB, c *http.Client, host, method, url string, header http.Header, body io.Reader) Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatalf("building request %s %s: %v", method, url, err)
	}
	if host != "" {
		req.Host = host
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", method, url, host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s (Host %s): reading body: %v", method, url, host, err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Trailer: resp.Trailer, Body: string(b)}
}

// rawRequest writes req verbatim on a new TCP connection to addr and reads
// one response. Use it for request lines Go's client would not send.
func rawRequest(t testing.TB, addr, req string) Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("writing raw request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading response to raw request %q: %v", firstLine(req), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body of raw request %q: %v", firstLine(req), err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Trailer: resp.Trailer, Body: string(b)}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// assertErrorBody checks that an error response is short plain text of the
// form "CODE Reason" and leaks none of the forbidden strings.
func assertErrorBody(t testing.TB, r Response, code int, forbidden ...string) {
	t.Helper()
	if r.Status != code {
		t.Errorf("status = %d, want %d (body %q)", r.Status, code, r.Body)
		return
	}
	want := fmt.Sprintf("%d %s", code, http.StatusText(code))
	if !strings.HasPrefix(strings.TrimSpace(r.Body), want) {
		t.Errorf("error body = %q, want it to start with %q", r.Body, want)
	}
	if len(r.Body) > 200 {
		t.Errorf("error body is %d bytes, want a short text: %q", len(r.Body), r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("error Content-Type = %q, want text/plain", ct)
	}
	leaks := append([]string{"dial tcp", "connection refused", "context deadline", "context canceled", "EOF", "goroutine", "panic"}, forbidden...)
	for _, f := range leaks {
		if f != "" && strings.Contains(r.Body, f) {
			t.Errorf("error body %q leaks %q", r.Body, f)
		}
	}
}

// ---------------------------------------------------------------- backends

// newBackend starts an httptest server closed when the test ends (after the
// gateway stopped, since cleanups run in reverse).
func newBackend(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// echoed is what echoHandler reports about the request it received.
type echoed struct {
	Backend    string
	Method     string
	Host       string
	RequestURI string
	Path       string
	RawQuery   string
	Header     http.Header
	BodyLen    int64
}

// echoHandler answers every request with a JSON description of it.
func echoHandler(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Backend-Name", name)
		json.NewEncoder(w).Encode(echoed{
			Backend: name, Method: r.Method, Host: r.Host, RequestURI: r.RequestURI,
			Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header, BodyLen: n,
		})
	}
}

// decodeEcho parses an echoHandler body.
func decodeEcho(t testing.TB, r Response) echoed {
	t.Helper()
	var e echoed
	if r.Status != http.StatusOK {
		t.Fatalf("status = %d, want 200 from the echo backend (body %q)", r.Status, r.Body)
	}
	if err := json.Unmarshal([]byte(r.Body), &e); err != nil {
		t.Fatalf("response is not the echo backend's JSON: %v (body %q)", err, r.Body)
	}
	return e
}

// isRefused reports whether err is a refused TCP connection.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
