package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

const (
	analysisHeading     = "## Analysis"
	analysisPlaceholder = analysisHeading + "\n\n(written by hand after the run; kept across runs)\n"
)

// preservedAnalysis returns the "## Analysis" section of an earlier report
// (from its heading to the end), or the placeholder.
func preservedAnalysis(old string) string {
	idx := -1
	if strings.HasPrefix(old, analysisHeading+"\n") {
		idx = 0
	} else if i := strings.Index(old, "\n"+analysisHeading+"\n"); i >= 0 {
		idx = i + 1
	} else if strings.HasSuffix(old, "\n"+analysisHeading) {
		idx = len(old) - len(analysisHeading)
	}
	if idx < 0 {
		return analysisPlaceholder
	}
	s := old[idx:]
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}

func fmtVal(m metric, v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf(m.format, v)
}

func maxOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return slices.Max(v)
}

// renderTables renders one Markdown table per scenario.
func (h *harness) renderTables(results []*scenarioResult) string {
	var b strings.Builder
	for _, res := range results {
		h.renderTable(&b, res)
	}
	b.WriteString(cpuColumnsNote)
	return b.String()
}

func (h *harness) renderTable(b *strings.Builder, res *scenarioResult) {
	def := res.def
	fmt.Fprintf(b, "### %d. %s\n\n", def.id, def.title)
	better := "higher is better"
	if def.metrics[0].lowerBetter {
		better = "lower is better"
	}
	cmd := res.command
	if cmd == "" {
		cmd = "(not run)"
	}
	length := " of " + secs(h.o.Duration)
	if def.id == 6 {
		length = ""
	}
	fmt.Fprintf(b, "%s. %s; median of %d round(s)%s, min–max across rounds.\n\n", cmd, strings.ToUpper(better[:1])+better[1:], h.o.Rounds, length)
	hasCPU := false
	for _, c := range res.cells {
		hasCPU = hasCPU || len(c.proxyCPU) > 0
	}
	header := []string{"proxy"}
	align := []string{"---"}
	for _, m := range def.metrics {
		header = append(header, m.label, "min–max")
		align = append(align, "---:", "---:")
		if def.baseline != "" {
			header = append(header, "vs "+def.baseline)
			align = append(align, "---:")
		}
	}
	if hasCPU {
		header = append(header, "proxy CPU", "load CPU", "other CPU")
		align = append(align, "---:", "---:", "---:")
	}
	header = append(header, "notes")
	align = append(align, "---")
	fmt.Fprintf(b, "| %s |\n|%s|\n", strings.Join(header, " | "), strings.Join(align, "|"))
	base := res.cells[def.baseline]
	for _, row := range res.rows {
		c := res.cells[row]
		cols := []string{row}
		switch {
		case c.na != "":
			for range def.metrics {
				cols = append(cols, mdEscape(c.na), "")
				if def.baseline != "" {
					cols = append(cols, "")
				}
			}
		case !c.ok():
			reason := "no result"
			if len(c.errs) > 0 {
				reason = c.errs[0]
			}
			for range def.metrics {
				cols = append(cols, "error: "+mdEscape(abbreviate(reason, 160)), "")
				if def.baseline != "" {
					cols = append(cols, "")
				}
			}
		default:
			for _, m := range def.metrics {
				v := c.values[m.key]
				med := median(v)
				cols = append(cols, fmtVal(m, med), fmtVal(m, slices.Min(v))+"–"+fmtVal(m, slices.Max(v)))
				if def.baseline != "" {
					ratio := "—"
					if base != nil && base.ok() {
						if bm := median(base.values[m.key]); bm > 0 {
							ratio = fmtRatio(med / bm)
						}
					}
					cols = append(cols, ratio)
				}
			}
		}
		if hasCPU {
			cpu := func(v []float64) string {
				if len(v) == 0 {
					return ""
				}
				return fmt.Sprintf("%.0f%%", median(v))
			}
			cols = append(cols, cpu(c.proxyCPU), cpu(c.loadCPU), cpu(c.extra["other_cpu"]))
		}
		cols = append(cols, mdEscape(strings.Join(h.cellNotes(res, row, c), "; ")))
		fmt.Fprintf(b, "| %s |\n", strings.Join(cols, " | "))
	}
	b.WriteString("\n")
	for _, n := range res.notes {
		fmt.Fprintf(b, "- %s\n", n)
	}
	b.WriteString("\n")
}

// cpuColumnsNote explains the CPU columns once, below the tables.
const cpuColumnsNote = "CPU columns: median share of one CPU used during a run by the proxy (all its processes), by the load generator plus the origin (which share the other CPU when pinned), and by every other process of the machine (user+system time from /proc/stat minus the first two; interrupt time, which the kernel charges to no process, is not counted). 100% means that side was saturated; a large \"other\" means something else competed for the CPUs during the run and its figures are less reliable.\n\n"

func fmtRatio(r float64) string {
	if r < 0.1 {
		return fmt.Sprintf("%.3f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// cellNotes summarises the extra figures of a cell.
func (h *harness) cellNotes(res *scenarioResult, row string, c *cell) []string {
	var notes []string
	if c.na != "" {
		return nil
	}
	if n := len(c.errs); n > 0 && c.ok() {
		notes = append(notes, fmt.Sprintf("%d of %d rounds failed: %s", n, c.rounds, abbreviate(c.errs[0], 120)))
	}
	if v := maxOf(c.extra["sock_errors"]); v > 0 {
		notes = append(notes, fmt.Sprintf("wrk socket errors: up to %.0f per run", v))
	}
	if v := maxOf(c.extra["failed"]); v > 0 {
		notes = append(notes, fmt.Sprintf("failed requests: up to %.0f per run", v))
	}
	if v := maxOf(c.extra["errors"]); v > 0 {
		notes = append(notes, fmt.Sprintf("errors: up to %.0f per run", v))
	}
	switch res.def.id {
	case 3:
		if v := c.extra["new_conns"]; len(v) > 0 {
			notes = append(notes, fmt.Sprintf("new TCP conns: %.0f", median(v)))
		}
	case 4:
		if v := c.extra["conns_per_req"]; len(v) > 0 {
			notes = append(notes, fmt.Sprintf("conns/req %.2f", median(v)))
		}
		if r := h.scenario4Resumable[row]; r != "" {
			notes = append(notes, "resumes: "+r)
		}
	case 5:
		if v := c.extra["origin_reqs"]; len(v) > 0 {
			notes = append(notes, fmt.Sprintf("origin reqs: %.0f", maxOf(v)))
		}
	case 6:
		if v := c.extra["n"]; len(v) > 0 {
			notes = append(notes, fmt.Sprintf("%.0f tunnels", v[0]))
		}
	case 8:
		if v := c.extra["rate"]; len(v) > 0 {
			rate, got := v[0], median(c.extra["achieved"])
			notes = append(notes, fmt.Sprintf("rate %.0f req/s", rate))
			if got < 0.97*rate {
				notes = append(notes, fmt.Sprintf("achieved only %.0f req/s", got))
			}
		}
	}
	if len(c.loadCPU) > 0 && median(c.loadCPU) >= 90 {
		if res.def.metrics[0].lowerBetter {
			notes = append(notes, "LOAD SIDE SATURATED: the latency includes queueing in the load generator")
		} else {
			notes = append(notes, "LOAD SIDE SATURATED: the proxy may do more")
		}
	}
	notes = append(notes, c.notes...)
	return notes
}

// renderFile is the whole report: machine, tuning, tables, configs and the
// hand-written analysis kept from the previous file.
func (h *harness) renderFile(rep *report, old string) string {
	var b strings.Builder
	mode := "`bench/run`"
	if h.o.Quick {
		mode = "`bench/run --quick` (quick mode: few, short rounds; indicative only)"
	}
	fmt.Fprintf(&b, "# Gatehouse benchmark results\n\nGenerated by %s on %s in %s. Regenerate with `bench/run` (see bench/README.md); everything from `## Analysis` on is kept across runs.\n\n",
		mode, time.Now().UTC().Format("2006-01-02 15:04 UTC"), rep.Elapsed.Round(time.Second))
	b.WriteString("## Machine\n\n")
	for _, l := range h.machine {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	fmt.Fprintf(&b, "- Rounds: %d per scenario, %s each (interleaved: round r runs every proxy once, starting from a different proxy each round)", h.o.Rounds, secs(h.o.Duration))
	if h.o.Warmup > 0 {
		fmt.Fprintf(&b, ", after one unmeasured %s warm-up run per proxy", secs(h.o.Warmup))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- Pinning: %s\n", h.pinNote)
	fmt.Fprintf(&b, "- Open files: RLIMIT_NOFILE raised to the hard limit, %d, for every child\n", h.nofile)
	if len(h.buildTimes) > 0 {
		fmt.Fprintf(&b, "- Built for this run: %s\n", strings.Join(h.buildTimes, ", "))
	}
	b.WriteString("\n## How each proxy was tuned\n\n")
	b.WriteString(tuningNotes)
	b.WriteString("\n\n## Results\n\n")
	b.WriteString(rep.Tables)
	if len(h.configs) > 0 {
		b.WriteString("<details><summary>The generated configurations (ports and paths are per run)</summary>\n\n")
		for _, c := range h.configs {
			b.WriteString(c)
			b.WriteString("\n")
		}
		b.WriteString("</details>\n\n")
	}
	b.WriteString(preservedAnalysis(old))
	return b.String()
}

// describeMachine lists the hardware and every program's version.
func (h *harness) describeMachine(ctx context.Context) []string {
	first := func(argv ...string) string {
		if argv[0] == "" {
			return "not installed"
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				return l
			}
		}
		return "unknown"
	}
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				mem = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	t := h.tools
	return []string{
		fmt.Sprintf("CPU: %s, %d logical CPUs (%d usable by this process)", model, runtime.NumCPU(), max(len(allowedCPUs()), 1)),
		"Memory: " + mem,
		"Kernel: " + strings.TrimSpace(string(kernel)),
		"Go: " + first(t["go"], "version"),
		"Gatehouse: " + first(h.gatehouse, "version") + " (built from the working tree)",
		"nginx: " + first(t["nginx"], "-v"),
		"HAProxy: " + first(t["haproxy"], "-v"),
		"Caddy: " + first(t["caddy"], "version"),
		"wrk: " + first(t["wrk"], "-v"),
		"h2load: " + first(t["h2load"], "--version"),
		"OpenSSL (nginx, HAProxy, wrk, h2load): " + first(lookTool("openssl"), "version"),
		"Date: " + time.Now().UTC().Format(time.RFC3339),
	}
}
