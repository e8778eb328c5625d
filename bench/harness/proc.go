package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a long-running process (a proxy or the origin) started in its own
// process group, so that the whole group (nginx's master and worker, for
// example) is stopped with one signal.
type child struct {
	name    string
	cmd     *exec.Cmd
	pgid    int
	logPath string
	done    chan struct{} // closed when the group leader has exited
}

// exited reports whether the group leader has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// logTail returns the last n bytes of the child's log, for error messages.
func (c *child) logTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// procs tracks every process group this run started, so that all of them are
// killed at the end (also after SIGINT) and none is left behind.
type procs struct {
	mu     sync.Mutex
	groups map[int]string // pgid -> name, every group ever started
	live   map[*child]bool
}

func newProcs() *procs {
	return &procs{groups: map[int]string{}, live: map[*child]bool{}}
}

// start runs argv as a child in a new process group with its output going to
// logPath. env is appended to the harness's environment.
func (p *procs) start(name string, argv, env []string, logPath string) (*child, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(logf, "# %s\n", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, pgid: cmd.Process.Pid, logPath: logPath, done: make(chan struct{})}
	p.mu.Lock()
	p.groups[c.pgid] = name
	p.live[c] = true
	p.mu.Unlock()
	go func() { cmd.Wait(); close(c.done) }()
	return c, nil
}

// stop sends SIGTERM to the child's group, then SIGKILL after grace, and
// waits for the leader; stragglers of the group are killed too.
func (p *procs) stop(c *child, grace time.Duration) {
	if c == nil {
		return
	}
	syscall.Kill(-c.pgid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
	}
	syscall.Kill(-c.pgid, syscall.SIGKILL)
	<-c.done
	// Workers re-parented to init after the leader died are still in the
	// group; give the kernel a moment to reap them.
	for i := 0; i < 50 && len(groupMembers(c.pgid)) > 0; i++ {
		syscall.Kill(-c.pgid, syscall.SIGKILL)
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	delete(p.live, c)
	p.mu.Unlock()
}

// stopAll stops every live child at once (used at the end and on SIGINT).
func (p *procs) stopAll() {
	p.mu.Lock()
	var cs []*child
	for c := range p.live {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(c, 5*time.Second) }()
	}
	wg.Wait()
	// Short-lived tools run through runTool are killed by their context;
	// anything still in one of our groups is killed here.
	p.mu.Lock()
	defer p.mu.Unlock()
	for pgid := range p.groups {
		if len(groupMembers(pgid)) > 0 {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}
}

// leftovers lists processes still alive in any group this run started, or
// whose parent is this process. Empty after a clean run.
func (p *procs) leftovers() []string {
	p.mu.Lock()
	groups := make(map[int]string, len(p.groups))
	for k, v := range p.groups {
		groups[k] = v
	}
	p.mu.Unlock()
	var out []string
	self := os.Getpid()
	for i := 0; i < 50; i++ { // the kernel may need a moment to reap
		out = out[:0]
		for _, st := range allProcs() {
			if st.state == "Z" && st.ppid != self {
				continue // a zombie of someone else's: not running
			}
			if name, ok := groups[st.pgrp]; ok {
				out = append(out, fmt.Sprintf("pid %d (%s, group of %s)", st.pid, st.comm, name))
			} else if st.ppid == self {
				out = append(out, fmt.Sprintf("pid %d (%s, child of the harness)", st.pid, st.comm))
			}
		}
		if len(out) == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

type procStat struct {
	pid, ppid, pgrp int
	comm, state     string
	cpuTicks        uint64 // utime + stime
}

// readStat parses /proc/PID/stat. comm may hold spaces and parentheses, so
// the fields are taken after the last ')'.
func readStat(path string) (procStat, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, false
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return procStat{}, false
	}
	var st procStat
	st.pid, _ = strconv.Atoi(strings.TrimSpace(s[:open]))
	st.comm = s[open+1 : close]
	f := strings.Fields(s[close+1:])
	// f[0]=state f[1]=ppid f[2]=pgrp ... f[11]=utime f[12]=stime
	if len(f) < 13 {
		return procStat{}, false
	}
	st.state = f[0]
	st.ppid, _ = strconv.Atoi(f[1])
	st.pgrp, _ = strconv.Atoi(f[2])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	stt, _ := strconv.ParseUint(f[12], 10, 64)
	st.cpuTicks = ut + stt
	return st, true
}

func allProcs() []procStat {
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	out := make([]procStat, 0, len(ents))
	for _, e := range ents {
		if st, ok := readStat(e); ok {
			out = append(out, st)
		}
	}
	return out
}

func groupMembers(pgid int) []int {
	var pids []int
	for _, st := range allProcs() {
		if st.pgrp == pgid && st.state != "Z" {
			pids = append(pids, st.pid)
		}
	}
	return pids
}

// clockTick is USER_HZ, the unit of utime/stime in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTick = 100

// groupCPU returns the CPU time used so far by the live members of a
// process group (children that already exited are not counted; the proxies'
// workers live as long as the proxy).
func groupCPU(pgid int) time.Duration {
	var ticks uint64
	for _, st := range allProcs() {
		if st.pgrp == pgid {
			ticks += st.cpuTicks
		}
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// toolRun is the outcome of one short-lived measurement tool.
type toolRun struct {
	stdout, stderr string
	cpu            time.Duration // user+system of the tool (and its waited-for children)
	wall           time.Duration
}

// runTool runs argv to completion in its own process group, killing the
// group when ctx ends or timeout passes.
func (p *procs) runTool(ctx context.Context, timeout time.Duration, argv []string, env []string) (toolRun, error) {
	return p.runToolIn(ctx, "", timeout, argv, env)
}

// runToolIn is runTool in directory dir ("" = the current one).
func (p *procs) runToolIn(ctx context.Context, dir string, timeout time.Duration, argv []string, env []string) (toolRun, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return toolRun{}, err
	}
	pgid := cmd.Process.Pid
	p.mu.Lock()
	p.groups[pgid] = filepath.Base(argv[0])
	p.mu.Unlock()
	err := cmd.Wait()
	// The tool may have left children in its group (wsidle's gateway and
	// backend are its own children and it stops them, but not if killed).
	if len(groupMembers(pgid)) > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	r := toolRun{stdout: stdout.String(), stderr: stderr.String(), wall: time.Since(start)}
	if ps := cmd.ProcessState; ps != nil {
		r.cpu = ps.UserTime() + ps.SystemTime()
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return r, fmt.Errorf("%s timed out after %v", filepath.Base(argv[0]), timeout)
		}
		return r, ctx.Err()
	}
	if err != nil {
		msg := strings.TrimSpace(r.stderr)
		if msg == "" {
			msg = strings.TrimSpace(r.stdout)
		}
		if len(msg) > 300 {
			msg = msg[len(msg)-300:]
		}
		return r, fmt.Errorf("%s: %v: %s", filepath.Base(argv[0]), err, msg)
	}
	return r, nil
}

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit; children
// inherit it (Go raises its own soft limit at start but hands children the
// original one unless the program calls Setrlimit itself).
func raiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Max, nil
}

// allowedCPUs returns the CPUs this process may run on (Cpus_allowed_list).
func allowedCPUs() []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return parseCPUList(strings.TrimSpace(v))
		}
	}
	return nil
}

// parseCPUList parses "0-3,5,7-8".
func parseCPUList(s string) []int {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out
}

// tcpActiveOpens reads the system-wide count of outgoing TCP connections
// (Tcp: ActiveOpens in /proc/net/snmp).
func tcpActiveOpens() (int64, bool) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Tcp:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "ActiveOpens" && i < len(f) {
				v, err := strconv.ParseInt(f[i], 10, 64)
				return v, err == nil
			}
		}
	}
	return 0, false
}

// systemCPU returns the CPU time all processes of the machine spent in user
// and system mode so far (the "cpu" line of /proc/stat; interrupt time is
// left out since the kernel does not charge it to any process).
func systemCPU() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "cpu" {
		return 0, false
	}
	var ticks uint64
	for _, s := range f[1:4] { // user nice system
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, false
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTick, true
}
