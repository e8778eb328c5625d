package config

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestAnchorsAndMerge(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `upstreams:
  a: &pool
    backends: [{url: "http://10.0.0.1"}]
    timeouts: {dial: 1s}
  b:
    <<: *pool
    timeouts: {dial: 2s}
sites:
  - &site
    hosts: [a.example]
    tls: off
    routes: &routes [{upstream: a}, {path: /b, upstream: b}]
  - <<: *site
    hosts: [b.example]
`)
	a, b := cfg.Upstreams["a"], cfg.Upstreams["b"]
	if a.Timeouts.Dial.D().String() != "1s" || b.Timeouts.Dial.D().String() != "2s" || b.Backends[0].URL.Host != "10.0.0.1" {
		t.Errorf("a = %+v, b = %+v", a, b)
	}
	if len(cfg.Sites) != 2 || cfg.Sites[1].Hosts[0] != "b.example" || len(cfg.Sites[1].Routes) != 2 || cfg.Sites[1].TLS.Mode != TLSOff {
		t.Errorf("merged site = %+v", cfg.Sites[1])
	}
	if cfg.Sites[1].Routes[1].Upstream.Pool != b {
		t.Error("merged route not resolved")
	}
}

func TestMoreErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"null list items", "sites:\n  - ~\n  - hosts: [~]\n    routes: [~]\n", []string{
			"name.yaml:2:5: site needs at least one host",
			"name.yaml:2:5: site needs at least one route",
			`name.yaml:3:13: bad host "": empty host`,
			"name.yaml:4:14: route has no action (upstream, respond, redirect or static)"}},
		{"null inline URL", "sites: [{hosts: [a], routes: [{upstream: [~]}]}]\n", []string{
			"name.yaml:1:43: expected a URL, got null"}},
		{"duplicate key in flow mapping", "sites: [{hosts: [a], hosts: [b], routes: [{respond: {}}]}]\n", []string{
			`name.yaml:1:22: duplicate key "hosts" (first at line 1)`}},
		{"same ports with a TLS site", "global: {http_port: 8080, https_port: 8080}\nsites: [{hosts: [a], routes: [{respond: {}}]}]\n", []string{
			"name.yaml:1:39: https_port must differ from http_port (both are 8080)"}},
		{"non-scalar key", "global: {[a]: 1}\n" + okSite, []string{
			"name.yaml:1:10: expected a key, got a list"}},
		{"string expected", "global: {email: [a]}\n" + okSite, []string{
			"name.yaml:1:17: expected a string, got a list"}},
		{"number out of range", "global: {http_port: 99999999999999999999}\n" + okSite, []string{
			"name.yaml:1:21: number 99999999999999999999 is out of range"}},
		{"upstream ref type", "sites: [{hosts: [a], routes: [{upstream: ''}]}]\n", []string{
			"name.yaml:1:42: empty upstream name"}},
		{"bad header", "sites: [{hosts: [a], routes: [{respond: {headers: {'a b': x}}}]}]\n", []string{
			`name.yaml:1:51: bad header name "a b"`}},
		{"bad redirect target", "sites: [{hosts: [a], routes: [{redirect: {to: //evil.example}}, {path: /x, redirect: {}}]}]\n", []string{
			`name.yaml:1:47: redirect to "//evil.example" must be an absolute http(s) URL or a path starting with "/"`,
			`name.yaml:1:86: redirect needs "to": an absolute http(s) URL or a path starting with "/"`}},
		{"health check values", "upstreams:\n  a:\n    backends: [{url: 'http://a'}]\n    health_check: {path: x, interval: 0, expect_status: 42, rise: 0}\n" + okSite, []string{
			`name.yaml:4:26: health_check path must start with "/", got "x"`,
			"name.yaml:4:39: health_check interval must be more than 0",
			`name.yaml:4:57: bad status "42": want a code such as 200, a range such as 200-399 or a class such as 2xx`,
			"name.yaml:4:67: rise must be at least 1, got 0"}},
		{"etcd", "global: {storage: {etcd: {prefix: x}}}\n" + okSite, []string{
			"name.yaml:1:26: etcd needs at least one endpoint",
			"name.yaml:1:26: storage.etcd is not available in this build yet; remove it to keep certificates in data_dir",
			`name.yaml:1:35: etcd prefix must start with "/", got "x"`}},
		{"no cascade after a type error", "sites:\n  - hosts: a.example\n    routes: {path: /}\n", []string{
			`name.yaml:2:12: expected a list, got "a.example"`,
			"name.yaml:3:13: expected a list, got a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse("name.yaml", []byte(tt.doc), noEnv)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v", err)
			}
			if got := errStrings(errs); !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", "127.0.0.1:2019"},
		{"admin: off", ""},
		{`admin: ""`, ""},
		{"admin: 127.0.0.1:9000", "127.0.0.1:9000"},
		{"admin: ':9000', admin_public: true", ":9000"},
		{"admin: '[::1]:9000'", "[::1]:9000"},
		{"admin: localhost:9000", "localhost:9000"},
	}
	for _, tt := range tests {
		cfg := mustParse(t, "global: {"+tt.in+"}\n"+okSite)
		if cfg.Global.Admin != tt.want {
			t.Errorf("%s: admin = %q, want %q", tt.in, cfg.Global.Admin, tt.want)
		}
	}
}

func TestClosest(t *testing.T) {
	t.Parallel()
	names := []string{"hosts", "tls", "cache", "encode", "headers", "routes", "health_check"}
	for in, want := range map[string]string{"host": "hosts", "route": "routes", "tsl": "tls", "xyzzy": "", "header": "headers", "encoding": "", "health": "health_check", "hea": ""} {
		if got := closest(in, names); got != want {
			t.Errorf("closest(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse checks that no document makes Parse panic, and that a config
// it accepts is complete (every route resolved to a pool).
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(okSite + "upstreams: {a: {backends: [{url: 'http://a'}]}}\n"))
	f.Add([]byte("sites: [{hosts: ['*'], routes: [{upstream: [http://x], strip_prefix: true}, {path: /r, redirect: {to: /}}]}]\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("x: ${A\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		cfg, err := parse("fuzz.yaml", doc, noEnv)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("cfg %v, err %v", cfg, err)
		}
		if cfg == nil {
			return
		}
		for _, s := range cfg.Sites {
			for _, r := range s.Routes {
				if r.Upstream != nil && r.Upstream.Pool == nil {
					t.Fatalf("route %q has an unresolved upstream", r.Path)
				}
			}
		}
	})
}

// TestAliasBomb checks that merge keys cannot expand a small file without
// bound, and that an error inside an anchor used twice is reported once.
func TestAliasBomb(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("a0: &a0 {hosts: [x]}\n")
	for i := 1; i <= 12; i++ {
		prev := "*a" + itoa(i-1)
		b.WriteString("a" + itoa(i) + ": &a" + itoa(i) + " {<<: [" + strings.Repeat(prev+", ", 9) + prev + "]}\n")
	}
	b.WriteString("sites: [{<<: *a12, routes: [{respond: {}}]}]\n")
	_, err := parse("bomb.yaml", []byte(b.String()), noEnv)
	if err == nil || !strings.Contains(err.Error(), "document too large (too many aliases?)") {
		t.Errorf("err = %v", err)
	}

	_, err = parse("twice.yaml", []byte("upstreams:\n  a: &p {backends: [{url: 'http://a', weight: x}]}\n  b: *p\n"+okSite), noEnv)
	if want := `twice.yaml:2:47: expected a number, got "x"`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestAdminNotLoopback(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"':9000'", "0.0.0.0:2019", "10.1.2.3:2019", "example.com:2019"} {
		_, err := Parse("name.yaml", []byte("global: {admin: "+in+"}\n"+okSite))
		if err == nil || !strings.Contains(err.Error(), "name.yaml:1:17: admin address") || !strings.Contains(err.Error(), "admin_public") {
			t.Errorf("admin %s: err = %v, want a not-loopback error at 1:17", in, err)
		}
	}
}

func TestStatusRange(t *testing.T) {
	t.Parallel()
	ok := map[string]StatusRange{"200": {200, 200}, "2xx": {200, 299}, "5XX": {500, 599}, "200-399": {200, 399}, " 204 ": {204, 204}}
	for in, want := range ok {
		got, err := parseStatusRange(in)
		if err != nil || got != want {
			t.Errorf("parseStatusRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "42", "600", "6xx", "399-200", "2x", "200-", "abc", "2000"} {
		if _, err := parseStatusRange(in); err == nil {
			t.Errorf("parseStatusRange(%q) succeeded", in)
		}
	}
	if !(StatusRange{200, 299}).Contains(204) || (StatusRange{200, 299}).Contains(300) {
		t.Error("Contains")
	}
}
