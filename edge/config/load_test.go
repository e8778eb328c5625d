package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// mustParse parses doc as "name.yaml" and fails the test on any error.
func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	cfg, err := parse("name.yaml", []byte(doc), noEnv)
	if err != nil {
		t.Fatalf("parse: unexpected errors:\n%v", err)
	}
	return cfg
}

func noEnv(string) (string, bool) { return "", false }

// TestExample loads the full example of the configuration contract.
func TestExample(t *testing.T) {
	t.Parallel()
	cfg, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.File != filepath.Join("testdata", "example.yaml") {
		t.Errorf("File = %q", cfg.File)
	}
	g := cfg.Global
	checks := []struct {
		name      string
		got, want any
	}{
		{"data_dir", g.DataDir, "./data"},
		{"email", g.Email, "ops@example.com"},
		{"http_port", g.HTTPPort, 80},
		{"https_port", g.HTTPSPort, 443},
		{"listen", g.Listen, "0.0.0.0"},
		{"http3", *g.HTTP3, true},
		{"admin", g.Admin, "127.0.0.1:2019"},
		{"shutdown_timeout", g.ShutdownTimeout.D(), 10 * time.Second},
		{"trusted_proxies", g.TrustedProxies, []Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{"acme.ca", g.ACME.CA, "https://acme-v02.api.letsencrypt.org/directory"},
		{"acme.ca_root", g.ACME.CARoot, ""},
		{"acme.challenges", g.ACME.Challenges, []string{"http-01", "tls-alpn-01"}},
		{"on_demand.ask", g.OnDemand.Ask, "http://127.0.0.1:9123/allow"},
		{"cache.max_size", g.Cache.MaxSize, Size(256 << 20)},
		{"etcd.endpoints", g.Storage.Etcd.Endpoints, []string{"http://127.0.0.1:2379"}},
		{"etcd.prefix", g.Storage.Etcd.Prefix, "/gatehouse"},
		{"etcd.dial_timeout", g.Storage.Etcd.DialTimeout.D(), 5 * time.Second},
		{"limits", g.Limits, ServerLimits{
			ReadHeaderTimeout: Duration(10 * time.Second),
			IdleTimeout:       Duration(2 * time.Minute),
			MaxHeaderBytes:    1 << 20,
		}},
	}
	api := cfg.Upstreams["api"]
	if api == nil {
		t.Fatalf("upstream api missing; have %v", slices.Collect(mapsKeys(cfg.Upstreams)))
	}
	s := cfg.Sites[0]
	r := s.Routes
	checks = append(checks, []struct {
		name      string
		got, want any
	}{
		{"upstreams", len(cfg.Upstreams), 1},
		{"api.name", api.Name, "api"},
		{"api.backends", len(api.Backends), 2},
		{"api.backend0", api.Backends[0].URL.String(), "http://127.0.0.1:3000"},
		{"api.backend1.weight", api.Backends[1].Weight, 1},
		{"api.balance", api.Balance, "round_robin"},
		{"api.health_check", *api.HealthCheck, HealthCheck{Path: "/health", Interval: Duration(5 * time.Second),
			Timeout: Duration(2 * time.Second), ExpectStatus: StatusRange{200, 200}, Rise: 2, Fall: 3}},
		{"api.timeouts", api.Timeouts, Timeouts{Dial: Duration(3 * time.Second),
			ResponseHeader: Duration(30 * time.Second), Idle: Duration(90 * time.Second), Queue: Duration(time.Second)}},
		{"api.passive", api.PassiveHealth, PassiveHealth{MaxFails: 3, Window: Duration(10 * time.Second),
			Cooldown: Duration(10 * time.Second), MaxCooldown: Duration(5 * time.Minute), MaxEjectedPercent: 50}},
		{"api.retries", api.Retries, Retries{Max: 2, BudgetPercent: 20, MaxBody: 64 << 10}},
		{"sites", len(cfg.Sites), 1},
		{"hosts", s.Hosts, []string{"example.com", "www.example.com"}},
		{"tls", s.TLS, TLS{Mode: TLSAuto}},
		{"cache", s.Cache, true},
		{"encode", s.Encode, []string{"zstd", "gzip"}},
		{"hsts", *s.Headers.HSTS, HSTS{MaxAge: Duration(365 * 24 * time.Hour)}},
		{"routes", len(r), 5},
		{"route0.path", r[0].Path, "/api/"},
		{"route0.strip", r[0].StripPrefix, true},
		{"route0.upstream", r[0].Upstream.Name, "api"},
		{"route0.pool", r[0].Upstream.Pool == api, true},
		{"route1.pool", r[1].Upstream.Pool == api, true},
		{"route2.redirect", *r[2].Redirect, Redirect{To: "https://example.com/new", Status: 308}},
		{"route3.static", *r[3].Static, Static{Root: "./public", Index: []string{"index.html"}}},
		{"route4.respond", *r[4].Respond, Respond{Status: 200, Body: "hello from gatehouse\n"}},
		{"tcp", *cfg.TCP[0], TCPProxy{Listen: "127.0.0.1:5432", Upstream: "api"}},
	}...)
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
	wantUnsupported := []string{
		"testdata/example.yaml:20:11: storage.etcd is not available in this build yet; remove it to keep certificates in data_dir",
		"testdata/example.yaml:48:17: static routes are not available in this build yet",
		"testdata/example.yaml:53:5: tcp proxying is not available in this build yet",
	}
	if got := errStrings(cfg.Unsupported()); !slices.Equal(got, wantUnsupported) {
		t.Errorf("Unsupported:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantUnsupported, "\n"))
	}
	wantWarnings := []string{
		"testdata/example.yaml:36:13: encode is not built yet; responses are not compressed",
	}
	if !slices.Equal(cfg.Warnings, wantWarnings) {
		t.Errorf("Warnings:\n%s\nwant:\n%s", strings.Join(cfg.Warnings, "\n"), strings.Join(wantWarnings, "\n"))
	}

	again, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, again) {
		t.Error("two loads of one file are not reflect.DeepEqual")
	}
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func errStrings(es Errors) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Error())
	}
	return out
}

const minimal = `
sites:
  - hosts: [localhost]
    tls: off
    routes:
      - respond: {body: hi}
`

func TestDefaults(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, minimal)
	g := cfg.Global
	want := Global{
		DataDir:         "./data",
		HTTPPort:        80,
		HTTPSPort:       443,
		Listen:          "0.0.0.0",
		HTTP3:           g.HTTP3,
		Admin:           "127.0.0.1:2019",
		ShutdownTimeout: Duration(10 * time.Second),
		ReloadGrace:     Duration(30 * time.Second),
		Limits: ServerLimits{
			ReadHeaderTimeout: Duration(10 * time.Second),
			IdleTimeout:       Duration(2 * time.Minute),
			MaxHeaderBytes:    1 << 20,
		},
		ACME:     ACME{CA: "https://acme-v02.api.letsencrypt.org/directory", Challenges: []string{"http-01", "tls-alpn-01"}},
		Cache:    CacheSettings{MaxSize: 256 << 20},
		OnDemand: OnDemand{AskTTL: Duration(5 * time.Minute), RateLimit: 10, RateWindow: Duration(time.Minute), NameInterval: Duration(time.Minute)},
	}
	if g.HTTP3 == nil || !*g.HTTP3 {
		t.Errorf("http3 = %v, want true", g.HTTP3)
	}
	if !reflect.DeepEqual(g, want) {
		t.Errorf("global = %+v\nwant     %+v", g, want)
	}
	r := cfg.Sites[0].Routes[0]
	if r.Path != "/" || r.Respond.Status != 200 || r.Respond.Body != "hi" {
		t.Errorf("route = %+v, respond = %+v", r, r.Respond)
	}
	if cfg.Upstreams == nil {
		t.Error("Upstreams is nil")
	}
	if u := cfg.Unsupported(); u != nil {
		t.Errorf("Unsupported = %v", u)
	}
	if cfg.Warnings != nil {
		t.Errorf("Warnings = %v", cfg.Warnings)
	}
}

func TestValues(t *testing.T) {
	t.Parallel()
	cfg := mustParse(t, `
global:
  admin: "off"
  http3: false
  http_port: 8080
  acme: {staging: true}
  trusted_proxies: [192.168.1.7, "10.1.2.3/8", "::1", "2001:db8::1/32"]
  limits: {max_header_bytes: 64 KiB, read_timeout: 1d12h, write_timeout: 0}
upstreams:
  web:
    backends: [{url: "h2c://10.0.0.1:8080/", weight: 5}]
    balance: least_conn
    health_check: {}
    timeouts: {dial: 0, idle: 1.5m}
sites:
  - hosts: ["Example.COM:8080", "[::1]:8080", "*.Wild.example", "*", "10.0.0.1:80", "trailing.example."]
    tls: {cert: testdata/c.pem, key: testdata/k.pem}
    routes:
      - path: /a
        upstream: [http://127.0.0.1:3000, "https://[::1]:3001"]
      - path: /b
        upstream: web
      - redirect: {to: /elsewhere}
`)
	g := cfg.Global
	if g.Admin != "" || *g.HTTP3 || g.HTTPPort != 8080 {
		t.Errorf("admin %q http3 %v http_port %d", g.Admin, *g.HTTP3, g.HTTPPort)
	}
	if g.ACME.CA != "https://acme-staging-v02.api.letsencrypt.org/directory" {
		t.Errorf("staging ca = %q", g.ACME.CA)
	}
	wantTP := []Prefix{
		netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("2001:db8::/32"),
	}
	if !slices.Equal(g.TrustedProxies, wantTP) {
		t.Errorf("trusted_proxies = %v", g.TrustedProxies)
	}
	if l := g.Limits; l.MaxHeaderBytes != 64<<10 || l.ReadTimeout.D() != 36*time.Hour || l.WriteTimeout != 0 || l.IdleTimeout.D() != 2*time.Minute {
		t.Errorf("limits = %+v", l)
	}
	web := cfg.Upstreams["web"]
	if web.Backends[0].Weight != 5 || web.Backends[0].URL.String() != "h2c://10.0.0.1:8080/" || web.Balance != "least_conn" {
		t.Errorf("web = %+v %+v", web, web.Backends[0])
	}
	if tm := web.Timeouts; tm.Dial != 0 || tm.ResponseHeader.D() != 30*time.Second || tm.Idle.D() != 90*time.Second {
		t.Errorf("explicit 0 must stay 0, absent gets default: %+v", tm)
	}
	if h := *web.HealthCheck; h != (HealthCheck{Path: "/", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), ExpectStatus: StatusRange{200, 399}, Rise: 2, Fall: 3}) {
		t.Errorf("health_check defaults = %+v", h)
	}
	s := cfg.Sites[0]
	if want := []string{"example.com", "::1", "*.wild.example", "*", "10.0.0.1", "trailing.example"}; !slices.Equal(s.Hosts, want) {
		t.Errorf("hosts = %q, want %q", s.Hosts, want)
	}
	if s.TLS != (TLS{Mode: TLSManual, Cert: "testdata/c.pem", Key: "testdata/k.pem"}) {
		t.Errorf("tls = %+v", s.TLS)
	}
	inline := s.Routes[0].Upstream
	const name = "route:example.com/a"
	if inline.Name != "" || len(inline.URLs) != 2 || inline.Pool == nil || inline.Pool != cfg.Upstreams[name] {
		t.Fatalf("inline ref = %+v; upstreams %v", inline, slices.Collect(mapsKeys(cfg.Upstreams)))
	}
	p := inline.Pool
	if p.Name != name || len(p.Backends) != 2 || p.Backends[1].URL.Host != "[::1]:3001" || p.Backends[1].Weight != 1 ||
		p.Balance != "round_robin" || p.Timeouts.Dial.D() != 3*time.Second {
		t.Errorf("inline pool = %+v", p)
	}
	if s.Routes[1].Upstream.Pool != web {
		t.Error("named ref not resolved")
	}
	if rd := s.Routes[2].Redirect; rd.To != "/elsewhere" || rd.Status != 308 || s.Routes[2].Path != "/" {
		t.Errorf("redirect = %+v", rd)
	}
	if cfg.Warnings != nil {
		t.Errorf("warnings = %q", cfg.Warnings)
	}
	if got := cfg.Unsupported(); got != nil {
		t.Errorf("unsupported = %q", errStrings(got))
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.HasPrefix(err.Error(), "reading config: ") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	var errs Errors
	if errors.As(err, &errs) {
		t.Error("a read failure must not be Errors")
	}
	path := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(path, []byte("sites: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if cfg != nil || !errors.As(err, &errs) {
		t.Fatalf("Load(bad) = %v, %v", cfg, err)
	}
	if want := path + `:1:8: expected a list, got "1"`; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
}

func TestUnsupportedHandBuilt(t *testing.T) {
	t.Parallel()
	cfg := &Config{File: "x.yaml", Sites: []*Site{{Hosts: []string{"a"}, Routes: []*Route{{Path: "/", Static: &Static{Root: "."}}}}}}
	want := []string{
		"x.yaml:0:0: static routes are not available in this build yet",
	}
	if got := errStrings(cfg.Unsupported()); !slices.Equal(got, want) {
		t.Errorf("got %q", got)
	}
}
