package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestQuick runs the whole harness with everything shrunk (one round of one
// second, 200 idle WebSockets) and checks that every scenario produced a
// number for every proxy it applies to, that the report has one table per
// scenario and that no process is left behind. It asserts no timing.
//
// It needs nginx, haproxy, caddy, wrk and h2load (bench/run installs them):
// without them it is skipped, unless CI=true, where it fails.
func TestQuick(t *testing.T) {
	var missing []string
	for _, tool := range []string{"nginx", "haproxy", "caddy", "wrk", "h2load"} {
		if lookTool(tool) == "" {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s not installed (bench/run installs them)", strings.Join(missing, ", "))
		}
		t.Skipf("%s not installed (bench/run installs them; with CI=true this test fails instead)", strings.Join(missing, ", "))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "RESULTS.md")
	// An earlier report whose analysis must survive the rewrite.
	const analysis = "## Analysis\n\nhand-written text that must be kept\n"
	if err := os.WriteFile(out, []byte("# old\n\nold tables\n\n"+analysis), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, options{
		Quick:    true,
		Rounds:   1,
		Duration: time.Second,
		WSIdleN:  200,
		Out:      out,
		Log:      &testLog{t: t},
	})
	if rep != nil {
		t.Logf("tables:\n%s", rep.Tables)
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	want := map[int][]string{
		1: allProxies, 2: allProxies, 3: allProxies, 4: allProxies, 8: allProxies,
		5: {"gatehouse", "nginx", "haproxy"}, // Caddy: n/a
		6: {"gatehouse"},
		7: {rowH3, rowH2},
	}
	if len(rep.Results) != len(scenarioDefs) {
		t.Errorf("%d scenario results, want %d", len(rep.Results), len(scenarioDefs))
	}
	for _, res := range rep.Results {
		rows := want[res.def.id]
		for _, row := range rows {
			c := res.cells[row]
			if c == nil {
				t.Errorf("scenario %d: no row for %s", res.def.id, row)
				continue
			}
			if len(c.errs) > 0 || c.na != "" {
				t.Errorf("scenario %d, %s: errors %q, n/a %q", res.def.id, row, c.errs, c.na)
			}
			for _, m := range res.def.metrics {
				v := c.values[m.key]
				if len(v) == 0 || !(median(v) > 0) {
					t.Errorf("scenario %d, %s: %s = %v, want a positive number", res.def.id, row, m.label, v)
				}
			}
		}
		if res.def.id == 5 {
			if c := res.cells["caddy"]; c == nil || c.na == "" {
				t.Errorf("scenario 5: caddy should be n/a")
			}
		}
	}

	// One table per scenario, each under its heading.
	for _, def := range scenarioDefs {
		heading := fmt.Sprintf("### %d. ", def.id)
		if n := strings.Count(rep.Tables, heading); n != 1 {
			t.Errorf("%d headings %q in the tables, want 1", n, heading)
			continue
		}
		after := rep.Tables[strings.Index(rep.Tables, heading):]
		if i := strings.Index(after, "\n| proxy |"); i < 0 || (strings.Index(after[1:], "\n### ") >= 0 && i > strings.Index(after[1:], "\n### ")) {
			t.Errorf("scenario %d has no table under its heading", def.id)
		}
	}
	if n := strings.Count(rep.Tables, "\n| proxy |"); n != len(scenarioDefs) {
		t.Errorf("%d tables, want %d", n, len(scenarioDefs))
	}

	file, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"## Machine", "## How each proxy was tuned", "## Results", rep.Tables} {
		if !strings.Contains(string(file), s) {
			t.Errorf("report file lacks %.60q", s)
		}
	}
	if !strings.HasSuffix(string(file), analysis) || strings.Count(string(file), "\n## Analysis\n") != 1 {
		t.Errorf("the earlier ## Analysis section was not kept as the file's end:\n%s", tail(string(file), 300))
	}

	// No child process left: neither in the groups the harness started nor
	// as a child of this test process.
	if len(rep.Leftovers) > 0 {
		t.Errorf("processes left: %v", rep.Leftovers)
	}
	self := os.Getpid()
	for _, st := range allProcs() {
		if st.ppid == self {
			t.Errorf("child process left: pid %d (%s)", st.pid, st.comm)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// testLog sends the harness's progress lines to t.Log.
type testLog struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.t.Log(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}
