package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestProxyConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		from     string
		to       []string
		listen   string
		port     int
		backends []string
		wantErr  string
	}{
		{"localhost:8080", []string{"127.0.0.1:3000"}, "127.0.0.1", 8080, []string{"http://127.0.0.1:3000"}, ""},
		{"example.com", []string{"https://a:443", "h2c://b:81"}, "0.0.0.0", 80, []string{"https://a:443", "h2c://b:81"}, ""},
		{"[::1]:9000", []string{"b:1"}, "::1", 9000, []string{"http://b:1"}, ""},
		{"", []string{"b:1"}, "", 0, nil, "--from is required"},
		{"a:1", nil, "", 0, nil, "--to is required"},
		{"a:99999", []string{"b:1"}, "", 0, nil, "bad port"},
		{"a:1", []string{"http://"}, "", 0, nil, "want host:port or a URL"},
		{"a:1", []string{"http://h:1/x"}, "", 0, nil, "no path"},
		{"a:1", []string{"ftp://h:1"}, "", 0, nil, "scheme must be"},
	}
	for _, tt := range tests {
		t.Run(tt.from, func(t *testing.T) {
			t.Parallel()
			doc, err := proxyConfig(tt.from, tt.to)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse("proxy", doc)
			if err != nil {
				t.Fatalf("generated config is invalid: %v\n%s", err, doc)
			}
			if u := cfg.Unsupported(); len(u) > 0 {
				t.Fatalf("generated config unsupported: %v", u)
			}
			if cfg.Global.Listen != tt.listen || cfg.Global.HTTPPort != tt.port {
				t.Fatalf("listen %s:%d, want %s:%d", cfg.Global.Listen, cfg.Global.HTTPPort, tt.listen, tt.port)
			}
			pool := cfg.Sites[0].Routes[0].Upstream.Pool
			if len(pool.Backends) != len(tt.backends) {
				t.Fatalf("%d backends, want %d", len(pool.Backends), len(tt.backends))
			}
			for i, b := range pool.Backends {
				if b.URL.String() != tt.backends[i] {
					t.Errorf("backend %d = %s, want %s", i, b.URL, tt.backends[i])
				}
			}
		})
	}
}

func TestUsageExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		code int
	}{
		{nil, exitUsage},
		{[]string{"bogus"}, exitUsage},
		{[]string{"run", "--nope"}, exitUsage},
		{[]string{"validate"}, exitUsage},
		{[]string{"validate", "--config", "x.yaml", "extra"}, exitUsage},
		{[]string{"run", "--log-level", "loud", "--config", "x.yaml"}, exitUsage},
		{[]string{"validate", "--config", "/nonexistent/gatehouse.yaml"}, exitFail},
		{[]string{"--help"}, exitOK},
		{[]string{"validate", "--log-level", "debug", "--config", "/nonexistent/x.yaml"}, exitFail},
		{[]string{"run", "--help"}, exitOK},
		{[]string{"version"}, exitOK},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			if code := realMain(tt.args, &out, &errb); code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errb.String())
			}
		})
	}
}
