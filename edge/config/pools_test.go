package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestPoolAndHeaderErrors covers the upstream-pool, security-header and
// route-header keys: each bad value is reported at its position.
func TestPoolAndHeaderErrors(t *testing.T) {
	t.Parallel()
	up := func(body string) string {
		return "upstreams:\n  a:\n    backends: [{url: 'http://a'}]\n    " + body + "\n" + okSite
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"header_hash without header", up("balance: header_hash"), []string{
			"name.yaml:4:14: balance header_hash needs hash_header: the request header to hash"}},
		{"bad hash header", up("balance: header_hash\n    hash_header: 'a b'"), []string{
			`name.yaml:5:18: bad hash_header "a b"`}},
		{"short sticky secret", up("balance: cookie\n    sticky: {secret: short}"), []string{
			"name.yaml:5:22: sticky secret must be at least 16 characters"}},
		{"bad sticky cookie", up("balance: cookie\n    sticky: {cookie: 'a;b', secret: 0123456789abcdef}"), []string{
			`name.yaml:5:22: bad sticky cookie name "a;b"`}},
		{"negative max_conns", "upstreams:\n  a:\n    backends: [{url: 'http://a', max_conns: -1}]\n" + okSite, []string{
			"name.yaml:3:45: max_conns must not be negative (0 means no cap), got -1"}},
		{"passive values", up("passive_health: {max_fails: 2, window: 0, cooldown: 1m, max_cooldown: 10s, max_ejected_percent: 101}"), []string{
			"name.yaml:4:44: passive_health window must be more than 0",
			"name.yaml:4:75: passive_health max_cooldown (10s) must be at least cooldown (1m0s)",
			"name.yaml:4:101: passive_health max_ejected_percent must be 0..100, got 101"}},
		{"negative max_fails", up("passive_health: {max_fails: -1}"), []string{
			"name.yaml:4:33: passive_health max_fails must not be negative (0 turns it off)"}},
		{"retries values", up("retries: {max: 11, budget_percent: -1, max_body: 1GiB}"), []string{
			"name.yaml:4:20: retries max must be 0..10, got 11",
			"name.yaml:4:40: retries budget_percent must be 0..100, got -1",
			"name.yaml:4:54: retries max_body must be at most 16MiB (it is buffered in memory)"}},
		{"health timeout over interval", up("health_check: {interval: 1s, timeout: 2s, host: 'a b'}"), []string{
			"name.yaml:4:43: health_check timeout (2s) must not exceed interval (1s)",
			`name.yaml:4:53: bad health_check host "a b"`}},
		{"bad frame options", "sites: [{hosts: [a], headers: {frame_options: ALLOW, csp: \"a\\nb\"}, routes: [{respond: {}}]}]\n", []string{
			"name.yaml:1:47: frame_options must be DENY, SAMEORIGIN or off, got \"ALLOW\"",
			"name.yaml:1:59: header value must not contain line breaks"}},
		{"route header edits", "sites: [{hosts: [a], routes: [{respond: {}, headers: {request: {set: {Host: x, 'a b': y}, remove: [content-length]}, response: {add: {X-A: \"1\\r\\n\"}}}}]}]\n", []string{
			"name.yaml:1:64: header Host cannot be edited by a route",
			"name.yaml:1:64: bad header name \"a b\"",
			"name.yaml:1:64: header Content-Length cannot be edited by a route",
			"name.yaml:1:128: header \"X-A\": value must not contain line breaks"}},
		{"object size over max size", "global: {cache: {max_size: 1MiB, max_object_size: 2MiB}}\n" + okSite, []string{
			"name.yaml:1:51: cache max_object_size (2097152 bytes) must not exceed max_size (1048576 bytes)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse("name.yaml", []byte(tt.doc), noEnv)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v; want %q", err, tt.want)
			}
			got := errStrings(errs)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestPoolDefaults(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "upstreams:\n  a:\n    backends: [{url: 'http://a', max_conns: 5}]\n    balance: cookie\n    health_check: {expect_status: 2xx, expect_body: ok}\n"+
		"sites: [{hosts: [ok.example], tls: off, headers: {csp: \"default-src 'self'\"}, routes: [{upstream: a, headers: {response: {set: {x-frame-options: DENY}}, request: {remove: [cookie]}}}]}]\n")
	u := cfg.Upstreams["a"]
	if u.Sticky == nil || u.Sticky.Cookie != "gatehouse_sticky" || u.Sticky.Secret != "" {
		t.Errorf("sticky = %+v", u.Sticky)
	}
	if u.Backends[0].MaxConns != 5 || u.Timeouts.Queue.D() != time.Second {
		t.Errorf("max_conns %d queue %s", u.Backends[0].MaxConns, u.Timeouts.Queue.D())
	}
	if h := u.HealthCheck; h.ExpectStatus != (StatusRange{200, 299}) || h.ExpectBody != "ok" {
		t.Errorf("health = %+v", h)
	}
	r := cfg.Sites[0].Routes[0]
	if r.Headers.Response.Set["X-Frame-Options"] != "DENY" || r.Headers.Request.Remove[0] != "Cookie" {
		t.Errorf("route headers not canonical: %+v", r.Headers)
	}
	if cfg.Sites[0].Headers.CSP != "default-src 'self'" {
		t.Errorf("csp = %q", cfg.Sites[0].Headers.CSP)
	}
	want := "name.yaml:4:14: balance cookie without sticky.secret: a random key is used, so affinity does not survive a restart or span instances"
	if len(cfg.Warnings) != 1 || cfg.Warnings[0] != want {
		t.Errorf("warnings = %q", cfg.Warnings)
	}
}

func TestPassiveNeverEjectsWarning(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "upstreams:\n  a:\n    backends: [{url: 'http://a'}]\n    passive_health: {max_ejected_percent: 0}\n"+okSite)
	want := "name.yaml:4:43: passive_health max_ejected_percent 0 means no backend is ever ejected"
	if len(cfg.Warnings) != 1 || cfg.Warnings[0] != want {
		t.Errorf("warnings = %q", cfg.Warnings)
	}
}

func TestHealthTimeoutDefaultFitsInterval(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, "upstreams:\n  a:\n    backends: [{url: 'http://a'}]\n    health_check: {interval: 500ms}\n"+okSite)
	if h := cfg.Upstreams["a"].HealthCheck; h.Timeout.D() != 500*time.Millisecond {
		t.Errorf("timeout = %s, want the interval (500ms)", h.Timeout.D())
	}
}
