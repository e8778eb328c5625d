package edge

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestPlan(t *testing.T) {
	t.Parallel()
	a := mustParse(t, `
global: {listen: 127.0.0.1, http_port: 8080, admin: "off"}
upstreams:
  api: {backends: [{url: "http://127.0.0.1:3000"}]}
  old: {backends: [{url: "http://127.0.0.1:3001"}]}
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - {path: /api/, upstream: api}
      - {path: /gone, respond: {body: x}}
      - {path: /same, respond: {body: same}}
  - hosts: [b.example]
    tls: off
    routes: [{path: /, respond: {body: b}}]
`)
	b := mustParse(t, `
global: {listen: 127.0.0.1, http_port: 8080, admin: "off"}
upstreams:
  api: {backends: [{url: "http://127.0.0.1:3002"}]}
  new: {backends: [{url: "http://127.0.0.1:3003"}]}
sites:
  - hosts: [a.example]
    tls: off
    cache: true
    routes:
      - {path: /api/, upstream: api}
      - {path: /same, respond: {body: same}}
      - {path: /new, upstream: new}
  - hosts: [c.example]
    tls: off
    routes: [{path: /, respond: {body: c}}]
`)
	want := []string{
		"+ pool new (1 backends)",
		"+ route a.example/new",
		"+ site c.example (1 routes)",
		"- pool old",
		"- route a.example/gone",
		"- site b.example",
		"~ pool api",
		"~ route a.example/api/",
		"~ site a.example: settings (cache, headers, encode or http3)",
	}
	if got := Plan(a, b); !slices.Equal(got, want) {
		t.Errorf("Plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := Plan(a, a); len(got) != 0 {
		t.Errorf("Plan(a, a) = %q, want nothing", got)
	}
	c := mustParse(t, strings.Replace(`
global: {listen: 127.0.0.1, http_port: 9090, admin: "off"}
sites: [{hosts: [a.example], tls: off, routes: [{path: /, respond: {body: x}}]}]
`, "", "", 1))
	if got := Plan(a, c); got[len(got)-1] != "! needs a restart: listen, http_port or https_port changed" {
		t.Errorf("restart line missing: %q", got)
	}
}

func TestPlanGlobal(t *testing.T) {
	t.Parallel()
	a := mustParse(t, `
global:
  listen: 127.0.0.1
  http_port: 8080
  admin: 127.0.0.1:2019
  trusted_proxies: [10.0.0.0/8]
  acme: {ca: "https://ca-one.example/dir?token=old-secret-value"}
  on_demand: {ask: "http://127.0.0.1:9000/ask"}
sites: [{hosts: [a.example], tls: off, routes: [{path: /, respond: {body: x}}]}]
`)
	b := mustParse(t, `
global:
  listen: 127.0.0.1
  http_port: 8080
  admin: 127.0.0.1:2019
  admin_public: true
  trusted_proxies: [10.0.0.0/8, 192.168.0.1]
  http3: true
  acme:
    ca: "https://ca-two.example/dir?token=new-secret-value"
    eab: {key_id: kid-new, mac_key: mac-new-secret}
  on_demand: {ask: "http://127.0.0.1:9000/ask", rate_limit: 99}
  limits: {read_timeout: 30s}
sites: [{hosts: [a.example], tls: off, routes: [{path: /, respond: {body: x}}]}]
`)
	got := Plan(a, b)
	want := []string{
		"~ global.acme.ca",
		"~ global.acme.eab",
		"~ global.admin_public",
		"~ global.limits.read_timeout",
		"~ global.on_demand.rate_limit",
		"~ global.trusted_proxies",
		"! needs a restart: global.limits changed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	all := strings.Join(got, "\n")
	for _, value := range []string{"secret", "kid-new", "ca-two", "192.168", "30s", "99", "true"} {
		if strings.Contains(all, value) {
			t.Errorf("the plan shows the value %q:\n%s", value, all)
		}
	}
	if got := Plan(b, b); len(got) != 0 {
		t.Errorf("Plan(b, b) = %q, want nothing", got)
	}

	// Nested pointers set on both sides are compared field by field.
	c := mustParse(t, strings.Replace(`
global:
  listen: 127.0.0.1
  http_port: 8080
  admin: 127.0.0.1:2019
  admin_public: true
  trusted_proxies: [10.0.0.0/8, 192.168.0.1]
  acme:
    ca: "https://ca-two.example/dir?token=new-secret-value"
    eab: {key_id: kid-new, mac_key: mac-other-secret}
  on_demand: {ask: "http://127.0.0.1:9000/ask", rate_limit: 99}
  limits: {read_timeout: 30s}
sites: [{hosts: [a.example], tls: off, routes: [{path: /, respond: {body: x}}]}]
`, "", "", 1))
	if got, want := Plan(b, c), []string{"~ global.acme.eab.mac_key"}; !slices.Equal(got, want) {
		t.Errorf("Plan(b, c) = %q, want %q (http3: true is the default)", got, want)
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                                    "",
		"https://acme.example/directory":      "https://acme.example/directory",
		"https://u:pw@acme.example/dir?k=v#f": "https://acme.example/dir?[redacted]",
		"http://127.0.0.1:9000/ask?":          "http://127.0.0.1:9000/ask?[redacted]",
		"10.0.0.1:2379":                       "10.0.0.1:2379",
		"root:pw@etcd.internal:2379":          "etcd.internal:2379",
		"http://[::1":                         "[redacted]",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactedConfig(t *testing.T) {
	t.Setenv("TOKEN", "tok-0123456789abcdef")
	cfg := mustParse(t, `
global:
  admin: "off"
  acme:
    ca: "https://acme-user:acme-pass@ca.example/directory?api_key=ca-query-secret"
    eab: {key_id: kid-1, mac_key: sekrit-mac}
    fallback: {ca: "https://fallback.example/dir?token=fallback-query-secret"}
  on_demand: {ask: "http://127.0.0.1:9000/ask?token=ask-query-secret"}
upstreams:
  api:
    backends: [{url: "http://127.0.0.1:3000"}]
    balance: cookie
    sticky: {secret: sticky-secret-0123456789}
sites:
  - hosts: [a.example]
    tls: off
    routes:
      - path: /
        upstream: api
        auth:
          basic: {alice: "$2a$10$0123456789012345678901uIcA6Gf0Dz5xbv5c6cf3YF4R4Tjd4wC"}
          bearer: ["${TOKEN}"]
        headers:
          request:
            set: {Authorization: "Bearer upstream-token-value", X-Forwarded-Env: prod-value}
            add: {Cookie: "sid=cookie-value"}
            remove: [X-Debug]
          response:
            set: {Cache-Control: no-store-value}
      - path: /inline
        upstream: ["http://127.0.0.1:3001"]
      - path: /r
        respond: {body: hi, headers: {Set-Cookie: "s=respond-cookie-value"}}
`)
	// What validation refuses today (etcd storage, backend userinfo) is
	// still redacted: set it by hand.
	cfg.Global.Storage.Etcd = &config.EtcdStorage{Endpoints: []string{"https://etcd-user:etcd-pass@etcd.example:2379", "10.0.0.5:2379"}}
	cfg.Upstreams["api"].Backends[0].URL.User = url.UserPassword("backend-user", "backend-pass")
	cfg.Sites[0].Routes[1].Upstream.URLs[0].User = url.UserPassword("inline-user", "inline-pass")
	cfg.Sites[0].Routes[1].Upstream.URLs[0].RawQuery = "key=inline-query"
	b, err := json.Marshal(RedactedConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, secret := range []string{
		"sekrit-mac", "kid-1", "sticky-secret", "tok-0123456789abcdef", "$2a$10$",
		"acme-user", "acme-pass", "ca-query-secret", "fallback-query-secret", "ask-query-secret",
		"etcd-user", "etcd-pass", "backend-user", "backend-pass", "inline-user", "inline-pass", "inline-query",
		"upstream-token-value", "prod-value", "cookie-value", "no-store-value", "respond-cookie-value",
	} {
		if strings.Contains(out, secret) {
			t.Errorf("redacted config shows %q:\n%s", secret, out)
		}
	}
	for _, keep := range []string{
		`"alice":"[redacted]"`, `"hosts":["a.example"]`, `"balance":"cookie"`, `"tls":"off"`, `"upstream":"api"`,
		`"ca":"https://ca.example/directory?[redacted]"`, `"ca":"https://fallback.example/dir?[redacted]"`,
		`"ask":"http://127.0.0.1:9000/ask?[redacted]"`, `"endpoints":["https://etcd.example:2379","10.0.0.5:2379"]`,
		`"url":"http://127.0.0.1:3000"`, `"upstream":["http://127.0.0.1:3001?[redacted]"]`,
		`"set":{"Authorization":"[redacted]","X-Forwarded-Env":"[redacted]"}`, `"add":{"Cookie":"[redacted]"}`,
		`"remove":["X-Debug"]`, `"set":{"Cache-Control":"[redacted]"}`, `"headers":{"Set-Cookie":"[redacted]"}`,
	} {
		if !strings.Contains(out, keep) {
			t.Errorf("redacted config lacks %s:\n%s", keep, out)
		}
	}
}
