package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Default values (see the field comments in types.go).
const (
	defaultDataDir        = "./data"
	defaultHTTPPort       = 80
	defaultHTTPSPort      = 443
	defaultListen         = "0.0.0.0"
	defaultAdmin          = "127.0.0.1:2019"
	defaultACMECA         = "https://acme-v02.api.letsencrypt.org/directory"
	defaultACMEStagingCA  = "https://acme-staging-v02.api.letsencrypt.org/directory"
	defaultEtcdPrefix     = "/gatehouse"
	defaultBalance        = "round_robin"
	defaultCacheMaxSize   = 256 << 20
	defaultMaxHeaderBytes = 1 << 20
)

// Load reads and validates the file at path. A file that cannot be read
// gives a wrapped error ("reading config: ..."); a bad file gives Errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	cfg.File = path
	return cfg, nil
}

// Parse decodes, expands (${VAR} from the environment), defaults and
// validates YAML bytes; name is used as FILE in error positions. Every
// problem is returned at once as Errors, sorted by position.
func Parse(name string, data []byte) (*Config, error) {
	return parse(name, data, os.LookupEnv)
}

// ParseUntrusted is Parse for a file from someone who must not learn about
// this process (the admin API's POST /plan): ${VAR} expands to the literal
// text "${VAR}" instead of the environment's value, and the files the config
// names (certificates, CA roots) are not looked at. The result is for
// comparing, never for serving.
func ParseUntrusted(name string, data []byte) (*Config, error) {
	return parseWith(name, data, func(v string) (string, bool) { return "${" + v + "}", true }, false)
}

func parse(name string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	return parseWith(name, data, lookup, true)
}

func parseWith(name string, data []byte, lookup func(string) (string, bool), checkFiles bool) (*Config, error) {
	d := &decoder{
		problems: problems{file: name},
		lookup:   lookup,
		at:       map[any]position{},
		keyAt:    map[any]position{},
		bad:      map[any]bool{},
	}
	root := d.readYAML(data)
	if root == nil {
		return nil, d.sorted()
	}
	cfg := &Config{}
	d.at[cfg] = posOf(root)
	d.decodeStruct(root, reflect.ValueOf(cfg).Elem(), 0)
	for name, u := range cfg.Upstreams {
		u.Name = name
	}
	d.applyDefaults(cfg)
	d.validate(cfg)
	if checkFiles {
		d.validateFiles(cfg)
	}
	cfg.src = d.unsupportedPositions(cfg)
	if len(d.list) > 0 {
		// Report what this build cannot serve together with the other
		// problems, so one run of `validate` shows everything.
		d.list = append(d.list, cfg.Unsupported()...)
		return nil, d.sorted()
	}
	cfg.Warnings = d.warnings(cfg)
	return cfg, nil
}

var yamlLineErr = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// readYAML parses data into the top-level mapping node, or reports why it
// cannot and returns nil.
func (d *decoder) readYAML(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		d.add(position{1, 1}, "config is empty")
		return nil
	}
	if err != nil {
		d.yamlError(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.add(posOf(&extra), "only one YAML document is allowed")
	case !errors.Is(err, io.EOF):
		d.yamlError(err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	for root.Kind == yaml.AliasNode {
		root = root.Alias
	}
	switch {
	case root.Kind == yaml.DocumentNode || isNull(root):
		d.add(position{1, 1}, "config is empty")
		return nil
	case root.Kind != yaml.MappingNode:
		d.errorf(root, "the top level must be a mapping (global:, upstreams:, sites:, tcp:), got %s", describe(root))
		return nil
	}
	return root
}

// yamlError converts a yaml.v3 syntax error ("yaml: line N: msg").
func (d *decoder) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		d.add(position{line, 1}, "%s", m[2])
		return
	}
	d.add(position{1, 1}, "%s", strings.TrimPrefix(msg, "yaml: "))
}

func durationDefault(d *decoder, v *Duration, def time.Duration) {
	if !d.has(v) {
		*v = Duration(def)
	}
}

func intDefault(d *decoder, v *int, def int) {
	if !d.has(v) {
		*v = def
	}
}

// applyDefaults fills in every value not written in the file. A value
// written explicitly (even 0) is kept for validation to judge.
func (d *decoder) applyDefaults(cfg *Config) {
	g := &cfg.Global
	if g.DataDir == "" {
		g.DataDir = defaultDataDir
	}
	intDefault(d, &g.HTTPPort, defaultHTTPPort)
	intDefault(d, &g.HTTPSPort, defaultHTTPSPort)
	if g.Listen == "" {
		g.Listen = defaultListen
	}
	if g.HTTP3 == nil {
		on := true
		g.HTTP3 = &on
	}
	if !d.has(&g.Admin) {
		g.Admin = defaultAdmin
	} else if g.Admin == "off" {
		g.Admin = ""
	}
	durationDefault(d, &g.ShutdownTimeout, 10*time.Second)
	durationDefault(d, &g.ReloadGrace, 30*time.Second)
	durationDefault(d, &g.Limits.ReadHeaderTimeout, 10*time.Second)
	durationDefault(d, &g.Limits.IdleTimeout, 2*time.Minute)
	if !d.has(&g.Limits.MaxHeaderBytes) {
		g.Limits.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	if g.ACME.CA == "" {
		g.ACME.CA = defaultACMECA
		if g.ACME.Staging {
			g.ACME.CA = defaultACMEStagingCA
		}
	}
	if !d.has(&g.ACME.Challenges) {
		g.ACME.Challenges = []string{"http-01", "tls-alpn-01"}
	}
	durationDefault(d, &g.OnDemand.AskTTL, 5*time.Minute)
	intDefault(d, &g.OnDemand.RateLimit, 10)
	durationDefault(d, &g.OnDemand.RateWindow, time.Minute)
	durationDefault(d, &g.OnDemand.NameInterval, time.Minute)
	if !d.has(&g.Cache.MaxSize) {
		g.Cache.MaxSize = defaultCacheMaxSize
	}
	if e := g.Storage.Etcd; e != nil {
		if e.Prefix == "" {
			e.Prefix = defaultEtcdPrefix
		}
		durationDefault(d, &e.DialTimeout, 5*time.Second)
	}
	for _, u := range cfg.Upstreams {
		d.upstreamDefaults(u)
	}
	for _, s := range cfg.Sites {
		if s.TLS.Mode == "" {
			s.TLS.Mode = TLSAuto
		}
		if s.HTTP3 == nil {
			s.HTTP3 = g.HTTP3
		}
		for _, r := range s.Routes {
			if !d.has(&r.Path) {
				r.Path = "/"
			}
			if r.Respond != nil {
				intDefault(d, &r.Respond.Status, 200)
			}
			if r.Redirect != nil {
				intDefault(d, &r.Redirect.Status, 308)
			}
			if rl := r.RateLimit; rl != nil {
				durationDefault(d, &rl.Per, time.Second)
				intDefault(d, &rl.Burst, rl.Requests)
				intDefault(d, &rl.MaxClients, 100000)
			}
			if a := r.Auth; a != nil && a.Realm == "" {
				a.Realm = "gatehouse"
			}
			durationDefault(d, &r.WebSocket.IdleTimeout, 10*time.Minute)
			intDefault(d, &r.WebSocket.MaxTunnels, 10000)
		}
	}
}

func (d *decoder) upstreamDefaults(u *Upstream) {
	if u.Balance == "" {
		u.Balance = defaultBalance
	}
	for _, b := range u.Backends {
		intDefault(d, &b.Weight, 1)
	}
	durationDefault(d, &u.Timeouts.Dial, 3*time.Second)
	durationDefault(d, &u.Timeouts.ResponseHeader, 30*time.Second)
	durationDefault(d, &u.Timeouts.Idle, 90*time.Second)
	durationDefault(d, &u.Timeouts.Queue, time.Second)
	if h := u.HealthCheck; h != nil {
		if h.Path == "" {
			h.Path = "/"
		}
		durationDefault(d, &h.Interval, 5*time.Second)
		// Default 2s, but never longer than the interval.
		durationDefault(d, &h.Timeout, 2*time.Second)
		if !d.has(&h.Timeout) && h.Interval > 0 {
			h.Timeout = min(h.Timeout, h.Interval)
		}
		if !d.has(&h.ExpectStatus) {
			h.ExpectStatus = StatusRange{200, 399}
		}
		intDefault(d, &h.Rise, 2)
		intDefault(d, &h.Fall, 3)
	}
	if u.Balance == "cookie" && u.Sticky == nil {
		u.Sticky = &Sticky{}
	}
	if s := u.Sticky; s != nil && s.Cookie == "" {
		s.Cookie = "gatehouse_sticky"
	}
	ph := &u.PassiveHealth
	intDefault(d, &ph.MaxFails, 3)
	durationDefault(d, &ph.Window, 10*time.Second)
	durationDefault(d, &ph.Cooldown, 10*time.Second)
	durationDefault(d, &ph.MaxCooldown, 5*time.Minute)
	intDefault(d, &ph.MaxEjectedPercent, 50)
	intDefault(d, &u.Retries.Max, 2)
	intDefault(d, &u.Retries.BudgetPercent, 20)
	if !d.has(&u.Retries.MaxBody) {
		u.Retries.MaxBody = 64 << 10
	}
}
