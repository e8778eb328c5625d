package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runCLI runs gatehouse to completion (20s at most) in dir with extra env.
func runCLI(t testing.TB, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, gatehouseBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("gatehouse %v did not finish within 20s\nstdout:\n%s\nstderr:\n%s", args, out.String(), errb.String())
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("gatehouse %v: %v", args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func TestCLIVersion(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := runCLI(t, "", nil, "version")
	if code != 0 {
		t.Errorf("gatehouse version exit code = %d, want 0 (stderr %q)", code, stderr)
	}
	if strings.TrimSpace(stdout+stderr) == "" {
		t.Errorf("gatehouse version printed nothing")
	}
}

func TestCLIHelp(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := runCLI(t, "", nil, "--help")
	if code != 0 {
		t.Errorf("gatehouse --help exit code = %d, want 0", code)
	}
	out := stdout + stderr
	for _, sub := range []string{"run", "validate", "proxy", "version"} {
		if !strings.Contains(out, sub) {
			t.Errorf("gatehouse --help does not mention %q:\n%s", sub, out)
		}
	}
}

func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	cases := [][]string{
		{"frobnicate"},
		{"run", "--no-such-flag"},
		{"validate", "--no-such-flag"},
		{"proxy", "--no-such-flag"},
		{"run", "--config"}, // flag without its value
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runCLI(t, t.TempDir(), nil, args...)
			if code != 2 {
				t.Errorf("gatehouse %v exit code = %d, want 2 (usage)\nstdout: %s\nstderr: %s", args, code, stdout, stderr)
			}
			if strings.TrimSpace(stderr+stdout) == "" {
				t.Errorf("gatehouse %v printed no explanation", args)
			}
		})
	}
}

// badLine is one deliberate mistake in a config file.
type badLine struct {
	line    int    // 1-based line of the mistake
	what    string // marker after "# ERR "
	mention string // a word the message must contain ("" for none)
}

// badConfig is a config file with several mistakes.
type badConfig struct {
	path     string
	httpPort int
	errs     []badLine
}

// writeBadConfig writes a config with three different mistakes: an unknown
// key, a bad duration and a route naming an unknown upstream.
func writeBadConfig(t testing.TB) badConfig {
	t.Helper()
	dir := t.TempDir()
	httpPort, httpsPort := freePort(t), freePort(t)
	text := globalBlock(httpPort, httpsPort, filepath.Join(dir, "data"), "shutdown_timeot: 5s # ERR unknown-key") + `
upstreams:
  api:
    backends:
      - url: http://127.0.0.1:9
    timeouts:
      dial: 5 parsecs # ERR bad-duration
sites:
  - hosts: [bad.test]
    tls: off
    routes:
      - path: /
        upstream: nope # ERR unknown-upstream
`
	mentions := map[string]string{"unknown-key": "shutdown_timeot", "bad-duration": "", "unknown-upstream": "nope"}
	path := filepath.Join(dir, "bad.yaml")
	return badConfig{path: path, httpPort: httpPort, errs: writeMarked(t, path, text, mentions)}
}

// writeMarked writes text to path and returns the "# ERR name" markers with
// their line numbers.
func writeMarked(t testing.TB, path, text string, mentions map[string]string) []badLine {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var errs []badLine
	for i, line := range strings.Split(text, "\n") {
		if _, what, ok := strings.Cut(line, "# ERR "); ok {
			errs = append(errs, badLine{line: i + 1, what: what, mention: mentions[what]})
		}
	}
	if len(errs) != len(mentions) {
		t.Fatalf("found %d markers, want %d", len(errs), len(mentions))
	}
	return errs
}

var posLine = regexp.MustCompile(`^(.+):(\d+):(\d+): (.+)$`)

// assertReported checks that output has a "FILE:LINE:COL: message" line for
// every mistake.
func assertReported(t *testing.T, output, file string, errs []badLine) {
	t.Helper()
	type pos struct {
		line int
		msg  string
	}
	var got []pos
	for l := range strings.Lines(output) {
		m := posLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil || m[1] != file {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		got = append(got, pos{n, m[4]})
	}
	for _, e := range errs {
		found := slices.ContainsFunc(got, func(p pos) bool {
			return p.line == e.line && (e.mention == "" || strings.Contains(p.msg, e.mention))
		})
		if !found {
			t.Errorf("no line %q (%s%s) in output:\n%s", fmt.Sprintf("%s:%d:COL: ...", file, e.line), e.what,
				map[bool]string{true: ", mentioning " + e.mention}[e.mention != ""], output)
		}
	}
}

func TestValidateReportsEveryError(t *testing.T) {
	t.Parallel()
	bc := writeBadConfig(t)
	stdout, stderr, code := runCLI(t, t.TempDir(), nil, "validate", "--config", bc.path)
	if code != 1 {
		t.Errorf("validate exit code = %d, want 1", code)
	}
	assertReported(t, stdout+stderr, bc.path, bc.errs)
}

func TestValidateSingleErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, global, body, mention string
	}{
		{"wrong-type", "", `
upstreams:
  api:
    backends:
      - url: http://127.0.0.1:9
        weight: heavy # ERR x
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        upstream: api
`, ""},
		{"missing-env-var", "", `
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "${GATEHOUSE_IT_SURELY_UNSET_VAR}"} # ERR x
`, "GATEHOUSE_IT_SURELY_UNSET_VAR"},
		{"unknown-route-key", "", `
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        strip_prefixx: true # ERR x
        respond: {status: 200, body: "hi"}
`, "strip_prefixx"},
		{"bad-size", "cache: {max_size: lots} # ERR x", `
sites:
  - hosts: [a.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "hi"}
`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			text := globalBlock(freePort(t), freePort(t), filepath.Join(dir, "data"), c.global) + strings.TrimLeft(c.body, "\n")
			path := filepath.Join(dir, "c.yaml")
			errs := writeMarked(t, path, text, map[string]string{"x": c.mention})
			stdout, stderr, code := runCLI(t, dir, nil, "validate", "--config", path)
			if code != 1 {
				t.Errorf("validate exit code = %d, want 1", code)
			}
			assertReported(t, stdout+stderr, path, errs)
		})
	}
}

func TestValidateAcceptsGoodConfig(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("x"))
	path, _, _, _ := writeGatewayConfig(t, GatewayConfig{
		Global: "shutdown_timeout: 1d12h\ntrusted_proxies: [127.0.0.1, 10.0.0.0/8]\ncache: {max_size: 64MiB}",
		Body: fmt.Sprintf(`
upstreams:
  api:
    backends:
      - url: %[1]s
        weight: 2
    timeouts: {dial: 1s, response_header: 300ms, idle: 90s}
sites:
  - hosts: [good.test, "*.good.test"]
    tls: off
    routes:
      - path: /api/
        strip_prefix: true
        upstream: api
      - path: /inline
        upstream: [%[1]s]
      - path: /old
        redirect: {to: "https://good.test/new", status: 308}
      - path: /
        respond: {status: 200, body: "${GATEHOUSE_IT_BODY}"}
`, be.URL),
	})
	env := []string{"GATEHOUSE_IT_BODY=hello"}
	cases := []struct {
		name string
		env  []string
		args []string
	}{
		{"--config", env, []string{"validate", "--config", path}},
		{"-config", env, []string{"validate", "-config", path}},
		{"GATEHOUSE_CONFIG", append([]string{"GATEHOUSE_CONFIG=" + path}, env...), []string{"validate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runCLI(t, t.TempDir(), c.env, c.args...)
			if code != 0 {
				t.Errorf("validate of a good config exit code = %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
			}
			if out := strings.ToLower(stdout + stderr); !strings.Contains(out, "ok") && !strings.Contains(out, "valid") {
				t.Errorf("validate of a good config printed %q, want an ok", stdout+stderr)
			}
		})
	}
}

// TestShippedConfigsValidate keeps configs/*.yaml from rotting.
func TestShippedConfigsValidate(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"quickstart.yaml", "reference.yaml"} {
		if !slices.Contains(files, "../configs/"+want) {
			t.Errorf("configs/%s is missing", want)
		}
	}
	for _, f := range files {
		rel := "configs/" + filepath.Base(f)
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runCLI(t, "..", nil, "validate", "--config", rel)
			if code != 0 {
				t.Errorf("gatehouse validate --config %s exit code = %d, want 0\nstdout: %s\nstderr: %s", rel, code, stdout, stderr)
			}
		})
	}
}

// TestProxySubcommand runs the one-line reverse proxy against one and two
// backends given as host:port or URL.
func TestProxySubcommand(t *testing.T) {
	t.Parallel()
	a := newBackend(t, echoHandler("a"))
	b := newBackend(t, echoHandler("b"))
	cases := []struct {
		name string
		to   []string
		want []string // backends that must all serve some request
	}{
		{"host:port", []string{a.Listener.Addr().String()}, []string{"a"}},
		{"url", []string{a.URL}, []string{"a"}},
		{"two", []string{a.URL, b.Listener.Addr().String()}, []string{"a", "b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var addr string
			startServing(t, func() ([]string, []string, string) {
				addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
				args := []string{"proxy", "--from", addr}
				for _, to := range c.to {
					args = append(args, "--to", to)
				}
				return nil, args, addr
			})
			client := newClient()
			defer client.CloseIdleConnections()
			seen := map[string]bool{}
			for i := range 20 {
				r := doRequest(t, client, "proxy.test", "GET", "http://"+addr+"/p/"+strconv.Itoa(i)+"?y=1", nil, nil)
				e := decodeEcho(t, r)
				if want := "/p/" + strconv.Itoa(i) + "?y=1"; e.RequestURI != want {
					t.Errorf("backend saw %q, want %q", e.RequestURI, want)
				}
				if got := strings.Join(e.Header.Values("X-Forwarded-For"), ", "); got != "127.0.0.1" {
					t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", got)
				}
				seen[e.Backend] = true
			}
			for _, w := range c.want {
				if !seen[w] {
					t.Errorf("backend %s served none of 20 requests (seen %v)", w, seen)
				}
			}
		})
	}
}
