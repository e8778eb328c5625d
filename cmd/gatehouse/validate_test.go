package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const validateNew = `
global: {listen: 127.0.0.1, http_port: 8080, admin: "off"}
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - {path: /, respond: {body: new}}
      - {path: /added, respond: {body: added}}
`

const validateOld = `
global: {listen: 127.0.0.1, http_port: 8080, admin: "off", admin_public: true}
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - {path: /, respond: {body: old}}
`

func runValidate(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = realMain(append([]string{"validate"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateAgainst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "new.yaml", validateNew)

	t.Run("valid", func(t *testing.T) {
		t.Parallel()
		old := writeFile(t, dir, "old.yaml", validateOld)
		code, stdout, stderr := runValidate(t, "--config", cfg, "--against", old)
		if code != exitOK {
			t.Fatalf("exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
		want := cfg + ": ok\nreload plan (against " + old + "):\n" +
			"  + route a.example/added\n" +
			"  ~ global.admin_public\n" +
			"  ~ route a.example/\n"
		if stdout != want {
			t.Errorf("stdout:\n%s\nwant:\n%s\nstderr: %s", stdout, want, stderr)
		}
	})

	t.Run("same", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runValidate(t, "--config", cfg, "--against", cfg)
		if code != exitOK || !strings.Contains(stdout, "reload plan (against "+cfg+"): no changes\n") {
			t.Fatalf("exit %d, want 0 and no changes\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
	})

	t.Run("missing", func(t *testing.T) {
		t.Parallel()
		missing := filepath.Join(dir, "nonexistent.yaml")
		code, stdout, stderr := runValidate(t, "--config", cfg, "--against", missing)
		if code != exitFail {
			t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitFail, stdout, stderr)
		}
		if !strings.Contains(stderr, missing) || !strings.Contains(stderr, "no such file") {
			t.Errorf("stderr does not say %s is missing:\n%s", missing, stderr)
		}
		if strings.Contains(stdout, "reload plan") {
			t.Errorf("stdout has a plan:\n%s", stdout)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		t.Parallel()
		bad := writeFile(t, dir, "bad.yaml", `
global: {listen: 127.0.0.1, http_port: 8080, admin: "off"}
sites:
  - hosts: [a.example]
    tls: off
    bogus_key: 1
    routes:
      - {path: /, upstream: nowhere}
`)
		code, stdout, stderr := runValidate(t, "--config", cfg, "--against", bad)
		if code != exitFail {
			t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitFail, stdout, stderr)
		}
		for _, want := range []string{bad + ":6:5: ", bad + ":8:", bad + ": 2 problem(s)"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		if strings.Contains(stdout, "reload plan") {
			t.Errorf("stdout has a plan:\n%s", stdout)
		}
	})
}

// TestValidateRemotePlan: the running gateway's answer to POST /plan is
// printed; a 422 (the file validated here, so the environment differs)
// gives warnings and exit 0; no gateway answering gives nothing.
func TestValidateRemotePlan(t *testing.T) {
	t.Parallel()
	serve := func(t *testing.T, status int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.URL.Path != "/plan" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	config := func(t *testing.T, admin string) string {
		return writeFile(t, t.TempDir(), "c.yaml", strings.Replace(validateNew, `admin: "off"`, "admin: "+admin, 1))
	}

	t.Run("ok", func(t *testing.T) {
		t.Parallel()
		admin := serve(t, http.StatusOK, `{"plan": ["+ route a.example/added"]}`)
		cfg := config(t, admin)
		code, stdout, stderr := runValidate(t, "--config", cfg)
		want := cfg + ": ok\nreload plan (against the gateway running at " + admin + "):\n  + route a.example/added\n"
		if code != exitOK || stdout != want {
			t.Errorf("exit %d, stdout:\n%s\nwant exit 0 and:\n%s\nstderr: %s", code, stdout, want, stderr)
		}
	})

	t.Run("422", func(t *testing.T) {
		t.Parallel()
		admin := serve(t, http.StatusUnprocessableEntity, `{"errors": ["c.yaml:3:5: bad thing", "c.yaml:4:1: other thing"]}`)
		cfg := config(t, admin)
		code, stdout, stderr := runValidate(t, "--config", cfg)
		if code != exitOK {
			t.Fatalf("exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
		for _, want := range []string{"could not read this file", "warning: c.yaml:3:5: bad thing\n", "warning: c.yaml:4:1: other thing\n"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		if stdout != cfg+": ok\n" {
			t.Errorf("stdout = %q, want only the ok line", stdout)
		}
	})

	t.Run("no gateway", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		admin := l.Addr().String()
		l.Close() // nothing listens there now
		cfg := config(t, admin)
		code, stdout, stderr := runValidate(t, "--config", cfg)
		if code != exitOK || stdout != cfg+": ok\n" || stderr != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0, only the ok line, nothing", code, stdout, stderr)
		}
	})
}
