package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExpand(t *testing.T) {
	t.Parallel()
	env := map[string]string{"A": "alpha", "EMPTY": "", "B_2": "b"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		in, want string
		errs     []string
	}{
		{"plain", "plain", nil},
		{"${A}", "alpha", nil},
		{"x-${A}-${B_2}-y", "x-alpha-b-y", nil},
		{"${EMPTY}", "", nil},
		{"$${A}", "${A}", nil},
		{"$$${A}", "$${A}", nil}, // leftmost match: "$" then "$${"
		{"$$$${A}", "$$${A}", nil},
		{"cost: $5 and $$", "cost: $5 and $$", nil},
		{"$A", "$A", nil},
		{"${MISSING}", "", []string{`environment variable "MISSING" is not set`}},
		{"${MISSING} ${ALSO}", "", []string{`environment variable "MISSING" is not set`, `environment variable "ALSO" is not set`}},
		{"${}", "", []string{`bad environment variable name ""`}},
		{"${1A}", "", []string{`bad environment variable name "1A"`}},
		{"${A:-x}", "", []string{`bad environment variable name "A:-x"`}},
		{"${A", "", []string{`unterminated "${" (write "$${" for a literal "${")`}},
	}
	for _, tt := range tests {
		got, errs := expand(tt.in, lookup)
		if !slices.Equal(errs, tt.errs) {
			t.Errorf("expand(%q) errors = %q, want %q", tt.in, errs, tt.errs)
			continue
		}
		if errs == nil && got != tt.want {
			t.Errorf("expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestEnvParse expands from the real environment (t.Setenv: not parallel).
func TestEnvParse(t *testing.T) {
	t.Setenv("GH_TEST_PORT", "8081")
	t.Setenv("GH_TEST_TIMEOUT", "1d")
	t.Setenv("GH_TEST_SECRET", "s3cr3t")
	t.Setenv("GH_TEST_HOST", "Env.Example")
	t.Setenv("GH_TEST_BACKEND", "http://127.0.0.1:3000")
	t.Setenv("GH_TEST_FLOW", "{a: 1}")
	doc := `global:
  http_port: ${GH_TEST_PORT}
  shutdown_timeout: "${GH_TEST_TIMEOUT}"
  http3: ${GH_TEST_BOOL}
sites:
  - hosts: ["${GH_TEST_HOST}"]
    tls: off
    routes:
      - path: /p
        upstream: ["${GH_TEST_BACKEND}"]
      - respond:
          body: "token=${GH_TEST_SECRET} literal=$${GH_TEST_SECRET} yaml=${GH_TEST_FLOW}"
          headers: {"${GH_TEST_KEY}": v}
`
	_, err := Parse("env.yaml", []byte(doc))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`env.yaml:4:10: environment variable "GH_TEST_BOOL" is not set`,
		`env.yaml:13:20: bad header name "${GH_TEST_KEY}"`,
	}
	if got := errStrings(errs); !slices.Equal(got, want) {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Setenv("GH_TEST_BOOL", "false")
	doc = strings.Replace(doc, `{"${GH_TEST_KEY}": v}`, "{X-Key: v}", 1)
	cfg, err := Parse("env.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Global
	if g.HTTPPort != 8081 || g.ShutdownTimeout.D() != 24*time.Hour || *g.HTTP3 {
		t.Errorf("global = %+v", g)
	}
	s := cfg.Sites[0]
	if s.Hosts[0] != "env.example" {
		t.Errorf("host = %q", s.Hosts[0])
	}
	if u := s.Routes[0].Upstream.Pool.Backends[0].URL.String(); u != "http://127.0.0.1:3000" {
		t.Errorf("backend = %q", u)
	}
	if body, want := s.Routes[1].Respond.Body, "token=s3cr3t literal=${GH_TEST_SECRET} yaml={a: 1}"; body != want {
		t.Errorf("body = %q, want %q", body, want)
	}

	t.Setenv("GH_TEST_PORT", "eighty")
	_, err = Parse("env.yaml", []byte(doc))
	if err == nil || err.Error() != `env.yaml:2:14: expected a number, got "eighty"` {
		t.Errorf("err = %v", err)
	}
}
