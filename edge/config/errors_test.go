package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// okSite is a valid sites: section appended to documents whose mistakes lie
// elsewhere.
const okSite = "sites: [{hosts: [ok.example], tls: off, routes: [{respond: {}}]}]\n"

func TestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"empty", "", []string{"name.yaml:1:1: config is empty"}},
		{"comments only", "# nothing\n\n# here\n", []string{"name.yaml:1:1: config is empty"}},
		{"top level list", "- a\n- b\n", []string{
			`name.yaml:1:1: the top level must be a mapping (global:, upstreams:, sites:, tcp:), got a list`}},
		{"yaml syntax", "global:\n  http_port: 80\n bad: [\n", []string{
			"name.yaml:2:1: did not find expected key"}},
		{"two documents", okSite + "---\nsites: []\n", []string{
			"name.yaml:2:1: only one YAML document is allowed"}},
		{"unknown key", "sites:\n  - hosts: [a.com]\n    tls: off\n    rout: []\n    routes: [{respond: {}}]\n", []string{
			`name.yaml:4:5: unknown key "rout" in site (did you mean "routes"?)`}},
		{"unknown top-level key", "global: {}\nfoo: 1\n" + okSite, []string{
			`name.yaml:2:1: unknown key "foo" in the top level`}},
		{"duplicate key", "global:\n  http_port: 80\n  http_port: 81\n" + okSite, []string{
			`name.yaml:3:3: duplicate key "http_port" (first at line 2)`}},
		{"wrong type number", "global: {http_port: abc}\n" + okSite, []string{
			`name.yaml:1:21: expected a number, got "abc"`}},
		{"wrong type mapping", "global: [1]\n" + okSite, []string{
			`name.yaml:1:9: expected a mapping, got a list`}},
		{"wrong type list", "global: {trusted_proxies: 10.0.0.0/8}\n" + okSite, []string{
			`name.yaml:1:27: expected a list, got "10.0.0.0/8"`}},
		{"wrong type bool", "global: {http3: yes}\n" + okSite, []string{
			`name.yaml:1:17: expected true or false, got "yes"`}},
		{"bad duration", "global: {shutdown_timeout: 10x}\n" + okSite, []string{
			`name.yaml:1:28: bad duration "10x": unknown unit "x" (use ns, us, ms, s, m, h or d)`}},
		{"duration without unit", "global: {shutdown_timeout: 10}\n" + okSite, []string{
			`name.yaml:1:28: bad duration "10": missing unit (for example "10s")`}},
		{"bad size", "global: {cache: {max_size: 12 parsecs}}\n" + okSite, []string{
			`name.yaml:1:28: bad size "12 parsecs": want a whole number of bytes with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB or TiB`}},
		{"bad prefix", "global: {trusted_proxies: [10.0.0.0/33]}\n" + okSite, []string{
			`name.yaml:1:28: bad IP prefix "10.0.0.0/33": want a CIDR such as 10.0.0.0/8 or a single IP address`}},
		{"missing env", "global: {email: \"${NO_SUCH_VAR}@example.com\"}\n" + okSite, []string{
			`name.yaml:1:17: environment variable "NO_SUCH_VAR" is not set`}},
		{"bad ports and addresses", "global: {http_port: 0, https_port: 70000, listen: localhost, admin: 2019}\n" + okSite, []string{
			"name.yaml:1:21: http_port must be 1..65535, got 0",
			"name.yaml:1:36: https_port must be 1..65535, got 70000",
			`name.yaml:1:51: listen must be an IP address such as 0.0.0.0 or 127.0.0.1, got "localhost"`,
			`name.yaml:1:69: bad admin address "2019": want host:port, or "off"`}},
		{"bad challenge", "global: {acme: {challenges: [dns-01]}}\n" + okSite, []string{
			`name.yaml:1:30: unknown ACME challenge "dns-01": expected http-01 or tls-alpn-01`}},
		{"bad backend URL", "upstreams:\n  api:\n    backends:\n      - url: localhost:3000\n      - url: http://a/b\n" + okSite, []string{
			`name.yaml:4:14: bad backend URL "localhost:3000": missing scheme (for example "http://localhost:3000")`,
			`name.yaml:5:14: bad backend URL "http://a/b": a path is not allowed (use the route's path and strip_prefix)`}},
		{"bad upstream", "upstreams:\n  a/b:\n    backends: []\n    balance: fastest\n  c: {backends: [{url: 'http://c', weight: 0}]}\n" + okSite, []string{
			`name.yaml:2:3: bad upstream name "a/b": use letters, digits, "_", "." and "-"`,
			`name.yaml:3:15: upstream "a/b" has no backends`,
			`name.yaml:4:14: unknown balance "fastest": expected round_robin, least_conn, random_two, ip_hash, header_hash, cookie or first`,
			`name.yaml:5:44: weight must be 1..1000, got 0`}},
		{"unknown upstream", "upstreams:\n  api: {backends: [{url: 'http://a'}]}\nsites:\n  - hosts: [a]\n    routes:\n      - upstream: apx\n", []string{
			`name.yaml:6:19: unknown upstream "apx" (known: api)`}},
		{"no sites", "global: {}\n", []string{
			"name.yaml:1:1: no sites: add at least one under sites:"}},
		{"site without hosts and routes", "sites:\n  - tls: off\n", []string{
			"name.yaml:2:5: site needs at least one host",
			"name.yaml:2:5: site needs at least one route"}},
		{"duplicate host across sites", "sites:\n  - hosts: [a.com]\n    routes: [{respond: {}}]\n  - hosts: [b.com, A.com:8080]\n    routes: [{respond: {}}]\n", []string{
			`name.yaml:4:20: host "a.com" already used by the site at name.yaml:2:5`}},
		{"duplicate host in one site", "sites:\n  - hosts: [a.com, a.com]\n    routes: [{respond: {}}]\n", []string{
			`name.yaml:2:20: host "a.com" is listed twice in this site (first at line 2)`}},
		{"bad hosts", "sites:\n  - hosts: [a.*.com, '*foo.com', 'a_b.com', '']\n    routes: [{respond: {}}]\n", []string{
			`name.yaml:2:13: bad host "a.*.com": a wildcard is only allowed as the whole first label, as in "*.example.com"`,
			`name.yaml:2:22: bad host "*foo.com": a wildcard is only allowed as the whole first label, as in "*.example.com"`,
			`name.yaml:2:34: bad host "a_b.com": use letters, digits and "-" (write internationalized names in xn-- form)`,
			`name.yaml:2:45: bad host "": empty host`}},
		{"bad tls", "sites: [{hosts: [a], tls: magic, routes: [{respond: {}}]}]\n", []string{
			`name.yaml:1:27: bad tls value "magic": expected auto, internal, on_demand, off or {cert: FILE, key: FILE}`}},
		{"tls without key", "sites: [{hosts: [a], tls: {cert: a.pem}, routes: [{respond: {}}]}]\n", []string{
			`name.yaml:1:27: tls needs both cert and key files`,
			`name.yaml:1:27: tls cert "a.pem" cannot be read: no such file or directory`}},
		{"route without action", "sites:\n  - hosts: [a]\n    routes:\n      - path: /x\n", []string{
			"name.yaml:4:9: route has no action (upstream, respond, redirect or static)"}},
		{"route with two actions", "sites:\n  - hosts: [a]\n    routes:\n      - path: /x\n        upstream: [http://a]\n        respond: {}\n", []string{
			"name.yaml:4:9: route has more than one action: upstream and respond"}},
		{"route with three actions", "sites: [{hosts: [a], routes: [{respond: {}, redirect: {to: /}, static: {root: .}}]}]\n", []string{
			"name.yaml:1:31: route has more than one action: respond, redirect and static",
			"name.yaml:1:72: static routes are not available in this build yet"}},
		{"bad paths", "sites:\n  - hosts: [a]\n    routes:\n      - {path: x, respond: {}}\n      - {path: /a/../b, respond: {}}\n      - {path: /a//b, respond: {}}\n      - {path: '/a?b', respond: {}}\n      - {path: /a, respond: {}}\n      - {path: /a, respond: {}}\n", []string{
			`name.yaml:4:16: bad route path "x": must start with "/"`,
			`name.yaml:5:16: bad route path "/a/../b": must not contain "." or ".." segments`,
			`name.yaml:6:16: bad route path "/a//b": must not contain "//"`,
			`name.yaml:7:16: bad route path "/a?b": must not contain "?" or "#"`,
			`name.yaml:9:16: duplicate route path "/a" (first at line 8)`}},
		{"strip_prefix without upstream", "sites: [{hosts: [a], routes: [{strip_prefix: true, respond: {}}]}]\n", []string{
			"name.yaml:1:46: strip_prefix needs an upstream"}},
		{"bad respond and redirect", "sites: [{hosts: [a], routes: [{path: /a, respond: {status: 101}}, {redirect: {to: example.com, status: 200}}]}]\n", []string{
			"name.yaml:1:60: respond status must be 200..599, got 101",
			`name.yaml:1:83: redirect to "example.com" must be an absolute http(s) URL or a path starting with "/"`,
			"name.yaml:1:104: redirect status must be 301, 302, 303, 307 or 308, got 200"}},
		{"bad encode", "sites: [{hosts: [a], encode: [gzip, deflate], routes: [{respond: {}}]}]\n", []string{
			`name.yaml:1:37: unknown encoding "deflate": expected zstd, gzip or br`}},
		{"bad inline upstream", "sites: [{hosts: [a], routes: [{upstream: []}, {path: /b, upstream: {x: 1}}]}]\n", []string{
			"name.yaml:1:42: empty upstream list: give a pool name or at least one backend URL",
			"name.yaml:1:68: expected an upstream name or a list of backend URLs, got a mapping"}},
		{"bad tcp", okSite + "tcp:\n  - {listen: 5432, upstream: nope}\n  - {upstream: x}\n", []string{
			`name.yaml:3:5: tcp proxying is not available in this build yet`,
			`name.yaml:3:14: bad tcp listen "5432": want host:port`,
			`name.yaml:3:30: unknown upstream "nope" (no upstreams are defined)`,
			`name.yaml:4:5: tcp entry needs a listen address (host:port)`,
			`name.yaml:4:5: tcp proxying is not available in this build yet`,
			`name.yaml:4:16: unknown upstream "x" (no upstreams are defined)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parse("name.yaml", []byte(tt.doc), noEnv)
			if cfg != nil {
				t.Errorf("got a config with errors %v", err)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %v (%T) is not Errors", err, err)
			}
			if got := errStrings(errs); !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if err.Error() != strings.Join(tt.want, "\n") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

// TestThreeMistakes checks that every problem is reported at once, sorted
// by position, even though they are found in a different order.
func TestThreeMistakes(t *testing.T) {
	t.Parallel()
	doc := `global:
  listen: localhost
upstreams:
  api:
    backends: [{url: "http://127.0.0.1:3000/path"}]
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - path: /
        upstream: apii
`
	_, err := Parse("three.yaml", []byte(doc))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v", err)
	}
	want := []Error{
		{"three.yaml", 2, 11, `listen must be an IP address such as 0.0.0.0 or 127.0.0.1, got "localhost"`},
		{"three.yaml", 5, 22, `bad backend URL "http://127.0.0.1:3000/path": a path is not allowed (use the route's path and strip_prefix)`},
		{"three.yaml", 11, 19, `unknown upstream "apii" (known: api)`},
	}
	if !slices.Equal(errs, want) {
		t.Errorf("got\n%v\nwant\n%v", errs, Errors(want))
	}
}

func TestErrorFormat(t *testing.T) {
	t.Parallel()
	es := Errors{{"f.yaml", 3, 5, "one"}, {"f.yaml", 10, 1, "two"}}
	if got := es.Error(); got != "f.yaml:3:5: one\nf.yaml:10:1: two" {
		t.Errorf("got %q", got)
	}
	es = Errors{{"f", 2, 9, "c"}, {"f", 1, 7, "b"}, {"f", 2, 1, "d"}, {"f", 1, 7, "a"}}
	sortErrors(es)
	var msgs []string
	for _, e := range es {
		msgs = append(msgs, e.Msg)
	}
	if strings.Join(msgs, "") != "badc" {
		t.Errorf("sorted order %v", msgs)
	}
}
