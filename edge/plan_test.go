package edge

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
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

func TestRedactedConfig(t *testing.T) {
	t.Setenv("TOKEN", "tok-0123456789abcdef")
	cfg := mustParse(t, `
global:
  admin: "off"
  acme: {eab: {key_id: kid-1, mac_key: sekrit-mac}}
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
`)
	b, err := json.Marshal(RedactedConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, secret := range []string{"sekrit-mac", "kid-1", "sticky-secret", "tok-0123456789abcdef", "$2a$10$"} {
		if strings.Contains(out, secret) {
			t.Errorf("redacted config shows %q:\n%s", secret, out)
		}
	}
	for _, keep := range []string{`"alice":"[redacted]"`, `"hosts":["a.example"]`, `"balance":"cookie"`, `"tls":"off"`, `"upstream":"api"`} {
		if !strings.Contains(out, keep) {
			t.Errorf("redacted config lacks %s:\n%s", keep, out)
		}
	}
}
