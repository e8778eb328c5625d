// Package config owns Gatehouse's configuration file: the YAML schema, decoding
// with source positions, defaults, ${VAR} expansion and validation.
//
// Configuration is plain data with no behaviour. Load returns a *Config whose
// every problem (unknown key, wrong type, bad value, dangling reference) has
// been reported at once as "FILE:LINE:COL: message". A *Config is never
// modified after Load returns and is safe for concurrent reads.
package config

import (
	"net/netip"
	"net/url"
	"time"
)

// Config is a whole, validated configuration file.
type Config struct {
	// File is the path the configuration was read from ("" for in-memory).
	File string `yaml:"-"`

	Global    Global               `yaml:"global"`
	Upstreams map[string]*Upstream `yaml:"upstreams"`
	Sites     []*Site              `yaml:"sites"`
	TCP       []*TCPProxy          `yaml:"tcp"`

	// Warnings are non-fatal remarks (for example keys accepted by the schema
	// whose feature is not built yet), each prefixed with FILE:LINE:COL.
	Warnings []string `yaml:"-"`

	// src holds the source positions Unsupported reports (see
	// unsupported.go). Empty for a Config built by hand, whose problems are
	// then reported at line 0.
	src source
}

// Global holds process-wide settings.
type Global struct {
	DataDir   string `yaml:"data_dir"`   // default ./data
	Email     string `yaml:"email"`      // ACME account contact
	HTTPPort  int    `yaml:"http_port"`  // default 80
	HTTPSPort int    `yaml:"https_port"` // default 443
	Listen    string `yaml:"listen"`     // default 0.0.0.0
	HTTP3     *bool  `yaml:"http3"`      // default true
	Admin     string `yaml:"admin"`      // default 127.0.0.1:2019; "" after Load means disabled (written "off" or "")
	// AdminPublic allows Admin on a non-loopback address (the admin API can
	// purge the cache and reload the config: it has no authentication).
	AdminPublic     bool     `yaml:"admin_public"`
	ShutdownTimeout Duration `yaml:"shutdown_timeout"` // default 10s
	// ReloadGrace: after a reload, WebSocket tunnels of removed routes and
	// of routes whose upstream changed are closed after this (default 30s).
	ReloadGrace    Duration      `yaml:"reload_grace"`
	TrustedProxies []Prefix      `yaml:"trusted_proxies"` // CIDRs or single IPs
	Limits         ServerLimits  `yaml:"limits"`
	ACME           ACME          `yaml:"acme"`
	OnDemand       OnDemand      `yaml:"on_demand"`
	Cache          CacheSettings `yaml:"cache"`
	Storage        Storage       `yaml:"storage"`
}

// ServerLimits bound what one client connection may cost the server.
type ServerLimits struct {
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"` // default 10s
	ReadTimeout       Duration `yaml:"read_timeout"`        // default 0 (none: uploads stream)
	WriteTimeout      Duration `yaml:"write_timeout"`       // default 0 (none: downloads stream)
	IdleTimeout       Duration `yaml:"idle_timeout"`        // default 2m
	MaxHeaderBytes    Size     `yaml:"max_header_bytes"`    // default 1MiB
}

// ACME configures the ACME issuer (used by the automatic-TLS work).
type ACME struct {
	CA         string   `yaml:"ca"`      // default Let's Encrypt production
	CARoot     string   `yaml:"ca_root"` // PEM file to trust for the ACME server
	Challenges []string `yaml:"challenges"`
	Staging    bool     `yaml:"staging"`
	EAB        *EAB     `yaml:"eab"` // External Account Binding for CAs that need it
	// Fallback is a second ACME CA tried when CA fails (ZeroSSL-style).
	Fallback *ACMEFallback `yaml:"fallback"`
}

// EAB is an ACME External Account Binding.
type EAB struct {
	KeyID  string `yaml:"key_id"`
	MACKey string `yaml:"mac_key"` // base64url HMAC key, as the CA gives it
}

// ACMEFallback is a second ACME CA.
type ACMEFallback struct {
	CA     string `yaml:"ca"`
	CARoot string `yaml:"ca_root"`
	EAB    *EAB   `yaml:"eab"`
}

// OnDemand configures on-demand TLS: a certificate is obtained during the
// first handshake for a name only if Ask answers 200 for it.
type OnDemand struct {
	Ask        string   `yaml:"ask"`         // GET ASK?domain=NAME; 200 allows issuance
	AskTTL     Duration `yaml:"ask_ttl"`     // default 5m: allow and deny answers are cached this long
	RateLimit  int      `yaml:"rate_limit"`  // default 10: new certificates per RateWindow, all names together
	RateWindow Duration `yaml:"rate_window"` // default 1m
	// NameInterval spaces issuance attempts for one name (default 1m).
	NameInterval Duration `yaml:"name_interval"`
}

// CacheSettings are the response cache's global settings.
type CacheSettings struct {
	MaxSize Size `yaml:"max_size"` // default 256MiB
	// MaxObjectSize: larger responses stream through but are not stored.
	// Default (0): an eighth of MaxSize, at most 64MiB.
	MaxObjectSize Size `yaml:"max_object_size"`
}

// Storage selects where certificates live; nil Etcd means files in DataDir.
type Storage struct {
	Etcd *EtcdStorage `yaml:"etcd"`
}

// EtcdStorage is the etcd certificate store.
type EtcdStorage struct {
	Endpoints   []string `yaml:"endpoints"`
	Prefix      string   `yaml:"prefix"`
	DialTimeout Duration `yaml:"dial_timeout"`
}

// Upstream is a named pool of backends.
type Upstream struct {
	Name        string       `yaml:"-"` // the key under upstreams:
	Backends    []*Backend   `yaml:"backends"`
	Balance     string       `yaml:"balance"` // default round_robin
	HealthCheck *HealthCheck `yaml:"health_check"`
	Timeouts    Timeouts     `yaml:"timeouts"`
	TLS         UpstreamTLS  `yaml:"tls"`
	// HostHeader, when set, replaces the client's Host on requests to this
	// upstream. Empty keeps the client's Host.
	HostHeader string `yaml:"host_header"`
	// HashHeader is the request header whose value picks the backend for
	// balance: header_hash (required there, ignored otherwise).
	HashHeader string `yaml:"hash_header"`
	// Sticky configures balance: cookie (defaults apply when absent).
	Sticky        *Sticky       `yaml:"sticky"`
	PassiveHealth PassiveHealth `yaml:"passive_health"`
	Retries       Retries       `yaml:"retries"`
}

// Backend is one server of an upstream.
type Backend struct {
	URL    *url.URL `yaml:"url"`    // scheme http, https or h2c; no path, query or fragment
	Weight int      `yaml:"weight"` // default 1
	// MaxConns caps concurrent requests to this backend (0: no cap). Over
	// it a request waits up to timeouts.queue for a slot, then gets 503.
	MaxConns int `yaml:"max_conns"`
}

// Sticky is the signed affinity cookie of balance: cookie.
type Sticky struct {
	Cookie string `yaml:"cookie"` // default "gatehouse_sticky"
	// Secret signs the cookie (HMAC-SHA256). Default: a random key per
	// process, so affinity does not survive a restart; set it (from
	// ${VAR}) to keep sessions across restarts and instances.
	Secret string   `yaml:"secret"`
	MaxAge Duration `yaml:"max_age"` // default 0: a session cookie
}

// HealthCheck configures active health checks: one checker per pool probes
// every backend each Interval (with up to 10% jitter).
type HealthCheck struct {
	Path         string      `yaml:"path"`          // default "/"
	Interval     Duration    `yaml:"interval"`      // default 5s
	Timeout      Duration    `yaml:"timeout"`       // default 2s, or interval if shorter
	ExpectStatus StatusRange `yaml:"expect_status"` // default 200-399; 200, "200-299" or "2xx"
	ExpectBody   string      `yaml:"expect_body"`   // substring the body must contain; "" = any
	Rise         int         `yaml:"rise"`          // default 2: passes in a row to return to rotation
	Fall         int         `yaml:"fall"`          // default 3: failures in a row to leave rotation
	Host         string      `yaml:"host"`          // Host header of probes; default: the backend's host:port
}

// StatusRange is an inclusive range of HTTP status codes, written as a
// single code (200), a range ("200-399") or a class ("2xx").
type StatusRange struct{ Min, Max int }

// Contains reports whether code is in the range.
func (r StatusRange) Contains(code int) bool { return r.Min <= code && code <= r.Max }

// PassiveHealth ejects a backend after MaxFails consecutive failures
// (connect errors, timeouts and, with FailOn5xx, 5xx answers) within Window,
// for Cooldown, doubling on each repeated ejection up to MaxCooldown.
type PassiveHealth struct {
	MaxFails    int      `yaml:"max_fails"`    // default 3; 0 turns passive health off
	Window      Duration `yaml:"window"`       // default 10s
	Cooldown    Duration `yaml:"cooldown"`     // default 10s
	MaxCooldown Duration `yaml:"max_cooldown"` // default 5m
	FailOn5xx   bool     `yaml:"fail_on_5xx"`  // default false
	// MaxEjectedPercent: never eject more than this share of the pool
	// (at least one backend always stays). Default 50.
	MaxEjectedPercent int `yaml:"max_ejected_percent"`
}

// Retries says when a failed attempt is repeated on another backend. A dial
// failure (nothing was sent) is always retried, for any method; other
// failures only for idempotent methods whose body is empty or buffered
// within MaxBody, and never after a response byte reached the client.
type Retries struct {
	Max int `yaml:"max"` // default 2: extra attempts per request; 0 retries only dial failures
	// BudgetPercent caps retries (other than dial failovers) at this share
	// of the pool's recent requests. Default 20.
	BudgetPercent int  `yaml:"budget_percent"`
	MaxBody       Size `yaml:"max_body"` // default 64KiB: larger bodies are not buffered, so not retried
}

// Timeouts towards an upstream.
type Timeouts struct {
	Dial           Duration `yaml:"dial"`            // default 3s
	ResponseHeader Duration `yaml:"response_header"` // default 30s
	Idle           Duration `yaml:"idle"`            // default 90s: idle keep-alive conns closed after
	Queue          Duration `yaml:"queue"`           // default 1s: wait for a backend under max_conns; 0: no wait (503 at once)
}

// UpstreamTLS configures TLS towards https backends.
type UpstreamTLS struct {
	CA                 string `yaml:"ca"`          // PEM file of roots to trust; default system roots
	ServerName         string `yaml:"server_name"` // SNI and verification name; default backend host
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Site is a set of hosts sharing TLS settings and routes.
type Site struct {
	Hosts   []string    `yaml:"hosts"` // lower-cased, without port
	TLS     TLS         `yaml:"tls"`
	HTTP3   *bool       `yaml:"http3"` // default: global.http3; false stops advertising h3 for this site
	Cache   bool        `yaml:"cache"`
	Encode  []string    `yaml:"encode"`
	Headers SiteHeaders `yaml:"headers"`
	Routes  []*Route    `yaml:"routes"`
}

// TLSMode says how a site gets its certificate.
type TLSMode string

// TLS modes.
const (
	TLSAuto     TLSMode = "auto"
	TLSInternal TLSMode = "internal"
	TLSOnDemand TLSMode = "on_demand"
	TLSOff      TLSMode = "off"
	TLSManual   TLSMode = "manual" // written as {cert: FILE, key: FILE}
)

// TLS is a site's `tls:` value: a mode string or {cert, key}.
type TLS struct {
	Mode TLSMode
	Cert string // TLSManual only
	Key  string // TLSManual only
}

// SiteHeaders configures the security-headers stage.
type SiteHeaders struct {
	// Security turns the stage on (default) or off for the site.
	Security *bool `yaml:"security"`
	// HSTS defaults to max_age 365d for tls: auto and on_demand sites (whose
	// certificates are publicly trusted) and to none for the others.
	// max_age: 0 sends "max-age=0", which tells browsers to forget it.
	HSTS              *HSTS  `yaml:"hsts"`
	CSP               string `yaml:"csp"`                // Content-Security-Policy; default none
	PermissionsPolicy string `yaml:"permissions_policy"` // default none
	ReferrerPolicy    string `yaml:"referrer_policy"`    // default strict-origin-when-cross-origin; "off" omits
	FrameOptions      string `yaml:"frame_options"`      // default SAMEORIGIN; "off" omits
	// Override makes these values replace the ones a backend sent
	// (default: the backend's header wins).
	Override bool `yaml:"override"`
	// KeepServer keeps the backend's Server and X-Powered-By headers
	// (default: removed).
	KeepServer bool `yaml:"keep_server"`
}

// HSTS is the Strict-Transport-Security policy.
type HSTS struct {
	MaxAge            Duration `yaml:"max_age"`
	IncludeSubdomains bool     `yaml:"include_subdomains"`
	Preload           bool     `yaml:"preload"`
}

// Route maps a path prefix to exactly one action: Upstream, Respond,
// Redirect or Static.
type Route struct {
	Path        string       `yaml:"path"` // default "/"; always starts with "/"
	StripPrefix bool         `yaml:"strip_prefix"`
	Upstream    *UpstreamRef `yaml:"upstream"`
	Respond     *Respond     `yaml:"respond"`
	Redirect    *Redirect    `yaml:"redirect"`
	Static      *Static      `yaml:"static"`
	// WebSocket tunes WebSocket tunnels on a proxied route (upgrades pass
	// through every proxied route; this only changes their limits).
	WebSocket WebSocket `yaml:"websocket"`
	// Headers edits request headers before the action and response headers
	// after it.
	Headers RouteHeaders `yaml:"headers"`
	// RateLimit limits requests per client IP (nil: no limit).
	RateLimit *RateLimit `yaml:"rate_limit"`
	// Auth requires credentials (nil: none).
	Auth *Auth `yaml:"auth"`
}

// RateLimit is a token bucket per client IP (trusted_proxies apply): Burst
// requests at once, refilled at Requests per Per. Over it: 429 with
// Retry-After.
type RateLimit struct {
	Requests int      `yaml:"requests"` // tokens added per Per (at least 1)
	Per      Duration `yaml:"per"`      // default 1s
	Burst    int      `yaml:"burst"`    // default: Requests
	// MaxClients bounds the client IPs tracked at once (default 100000);
	// the least recently seen are forgotten first.
	MaxClients int `yaml:"max_clients"`
}

// Auth requires HTTP authentication on a route: a Basic user whose bcrypt
// hash matches, or one of the Bearer tokens. Without valid credentials: 401
// with WWW-Authenticate.
type Auth struct {
	Realm  string            `yaml:"realm"`  // default "gatehouse"
	Basic  map[string]string `yaml:"basic"`  // user -> bcrypt hash ($2a$, $2b$ or $2y$)
	Bearer []string          `yaml:"bearer"` // accepted tokens; write them as ${VAR}
}

// RouteHeaders are a route's header edits.
type RouteHeaders struct {
	Request  HeaderOps `yaml:"request"`
	Response HeaderOps `yaml:"response"`
}

// HeaderOps edit one header map: Remove first, then Set, then Add. Names
// are canonicalised by Load; values are literal.
type HeaderOps struct {
	Add    map[string]string `yaml:"add"`
	Set    map[string]string `yaml:"set"`
	Remove []string          `yaml:"remove"`
}

// WebSocket limits the WebSocket tunnels of one route.
type WebSocket struct {
	IdleTimeout Duration `yaml:"idle_timeout"` // default 10m: a tunnel with no traffic either way is closed
	MaxTunnels  int      `yaml:"max_tunnels"`  // default 10000: concurrent tunnels; over it new upgrades get 503
}

// UpstreamRef is a route's `upstream:` value: a pool name, or an inline list
// of backend URLs. After Load, Pool always points at the pool (for an inline
// list, an anonymous pool named "route:<site host><path>").
type UpstreamRef struct {
	Name string
	URLs []*url.URL
	Pool *Upstream `yaml:"-"`
}

// Respond answers with a fixed response.
type Respond struct {
	Status  int               `yaml:"status"` // default 200
	Body    string            `yaml:"body"`
	Headers map[string]string `yaml:"headers"`
}

// Redirect answers with a redirect to To (the request's query is not added).
type Redirect struct {
	To     string `yaml:"to"`
	Status int    `yaml:"status"` // default 308; one of 301, 302, 303, 307, 308
}

// Static serves files (built by the small-sites work).
type Static struct {
	Root   string   `yaml:"root"`
	Index  []string `yaml:"index"`
	Browse bool     `yaml:"browse"`
	SPA    bool     `yaml:"spa"`
}

// TCPProxy is an L4 listener (built by the protocol-breadth work).
type TCPProxy struct {
	Listen   string `yaml:"listen"`
	Upstream string `yaml:"upstream"`
}

// Duration is a time.Duration written as a Go duration with an extra "d"
// (24h) unit: "90s", "5m", "365d", "1d12h".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as a plain integer or with a unit:
// B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
type Size int64

// Prefix is an IP network; a bare address means a single host (/32 or /128).
type Prefix = netip.Prefix
