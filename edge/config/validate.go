package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

var (
	upstreamName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	balances     = []string{"round_robin", "least_conn", "random_two", "ip_hash", "header_hash", "cookie", "first"}
	challenges   = []string{"http-01", "tls-alpn-01"}
	encodings    = []string{"zstd", "gzip", "br"}
)

// orList formats ["a", "b", "c"] as "a, b or c".
func orList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

// validate checks every rule that decoding cannot, resolves upstream
// references (creating the pools of inline upstream lists) and normalizes
// hosts.
func (d *decoder) validate(cfg *Config) {
	d.validateGlobal(cfg)
	names := make([]string, 0, len(cfg.Upstreams))
	for name := range cfg.Upstreams {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		d.validateUpstream(cfg.Upstreams[name])
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = map[string]*Upstream{}
	}
	d.validateSites(cfg, names)
	listens := map[string]position{}
	for _, t := range cfg.TCP {
		if d.failed(t) {
			continue
		}
		at := d.pos(&t.Listen, t)
		if t.Listen == "" {
			d.add(d.pos(t), "tcp entry needs a listen address (host:port)")
		} else if msg := checkHostPort(t.Listen); msg != "" {
			d.add(at, "bad tcp listen %q: %s", t.Listen, msg)
		} else if first, dup := listens[t.Listen]; dup {
			d.add(at, "tcp listen %q already used at line %d", t.Listen, first.Line)
		} else {
			listens[t.Listen] = at
		}
		if t.Upstream == "" {
			d.add(d.pos(t), "tcp entry needs an upstream")
		} else if cfg.Upstreams[t.Upstream] == nil || !upstreamName.MatchString(t.Upstream) {
			d.add(d.pos(&t.Upstream), "%s", unknownUpstream(t.Upstream, names))
		}
	}
}

func (d *decoder) checkPort(v *int, key string) {
	if *v < 1 || *v > 65535 {
		d.add(d.pos(v), "%s must be 1..65535, got %d", key, *v)
	}
}

// checkHostPort returns why s is not a usable "host:port", or "".
func checkHostPort(s string) string {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "port must be 1..65535"
	}
	return ""
}

// checkHTTPURL returns why s is not an absolute http(s) URL, or "".
func checkHTTPURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "want an absolute http:// or https:// URL"
	}
	return ""
}

func (d *decoder) validateGlobal(cfg *Config) {
	g := &cfg.Global
	d.checkPort(&g.HTTPPort, "http_port")
	d.checkPort(&g.HTTPSPort, "https_port")
	if a, err := netip.ParseAddr(g.Listen); err != nil || a.Zone() != "" {
		d.add(d.pos(&g.Listen), "listen must be an IP address such as 0.0.0.0 or 127.0.0.1, got %q", g.Listen)
	}
	if g.Admin != "" {
		if msg := checkHostPort(g.Admin); msg != "" {
			d.add(d.pos(&g.Admin), "bad admin address %q: %s, or \"off\"", g.Admin, msg)
		} else if !g.AdminPublic && !loopbackHostPort(g.Admin) {
			d.add(d.pos(&g.Admin), "admin address %q is not loopback: the admin API has no authentication; use 127.0.0.1 or [::1], or set admin_public: true", g.Admin)
		}
	}
	if c := g.Cache; c.MaxObjectSize > c.MaxSize && c.MaxSize > 0 {
		d.add(d.pos(&g.Cache.MaxObjectSize), "cache max_object_size (%d bytes) must not exceed max_size (%d bytes)", c.MaxObjectSize, c.MaxSize)
	}
	if g.Email != "" && (!strings.Contains(g.Email, "@") || strings.ContainsAny(g.Email, " \t\r\n")) {
		d.add(d.pos(&g.Email), "bad email %q", g.Email)
	}
	if msg := checkHTTPURL(g.ACME.CA); msg != "" {
		d.add(d.pos(&g.ACME.CA), "bad acme ca %q: %s", g.ACME.CA, msg)
	}
	if len(g.ACME.Challenges) == 0 && !d.failed(&g.ACME.Challenges) {
		d.add(d.pos(&g.ACME.Challenges), "acme challenges must list at least one of %s", orList(challenges))
	}
	for i, c := range g.ACME.Challenges {
		if !slices.Contains(challenges, c) {
			d.add(d.pos(&g.ACME.Challenges[i]), "unknown ACME challenge %q: expected %s", c, orList(challenges))
		}
	}
	if a := g.OnDemand.Ask; a != "" {
		if msg := checkHTTPURL(a); msg != "" {
			d.add(d.pos(&g.OnDemand.Ask), "bad on_demand ask %q: %s", a, msg)
		}
	}
	if g.OnDemand.RateLimit < 1 && d.has(&g.OnDemand.RateLimit) {
		d.add(d.pos(&g.OnDemand.RateLimit), "on_demand rate_limit must be at least 1")
	}
	if f := g.ACME.Fallback; f != nil {
		if msg := checkHTTPURL(f.CA); msg != "" {
			d.add(d.pos(&f.CA, f), "bad acme fallback ca %q: %s", f.CA, msg)
		}
	}
	for _, e := range []*EAB{g.ACME.EAB, fallbackEAB(g.ACME.Fallback)} {
		if e != nil && (e.KeyID == "" || e.MACKey == "") {
			d.add(d.pos(e), "eab needs both key_id and mac_key")
		}
	}
	for _, s := range cfg.Sites {
		if s.TLS.Mode == TLSOnDemand && g.OnDemand.Ask == "" {
			d.add(d.pos(&s.TLS, s), "tls: on_demand needs global.on_demand.ask: without it anyone could make Gatehouse order certificates for any name")
		}
	}
	if e := g.Storage.Etcd; e != nil {
		if len(e.Endpoints) == 0 && !d.failed(&e.Endpoints) {
			d.add(d.pos(&e.Endpoints, e), "etcd needs at least one endpoint")
		}
		for i, ep := range e.Endpoints {
			if msg := checkHTTPURL(ep); msg != "" {
				d.add(d.pos(&e.Endpoints[i]), "bad etcd endpoint %q: %s", ep, msg)
			}
		}
		if !strings.HasPrefix(e.Prefix, "/") {
			d.add(d.pos(&e.Prefix), "etcd prefix must start with \"/\", got %q", e.Prefix)
		}
	}
	// https_port only matters once a site uses TLS.
	if g.HTTPPort == g.HTTPSPort && slices.ContainsFunc(cfg.Sites, func(s *Site) bool { return s.TLS.Mode != TLSOff }) {
		d.add(d.pos(&g.HTTPSPort, &g.HTTPPort, cfg), "https_port must differ from http_port (both are %d)", g.HTTPPort)
	}
}

func (d *decoder) validateUpstream(u *Upstream) {
	if d.failed(u) {
		return
	}
	if !upstreamName.MatchString(u.Name) {
		d.add(d.keyAt[u], "bad upstream name %q: use letters, digits, \"_\", \".\" and \"-\"", u.Name)
	}
	if len(u.Backends) == 0 && !d.failed(&u.Backends) {
		d.add(d.pos(&u.Backends, u), "upstream %q has no backends", u.Name)
	}
	for _, b := range u.Backends {
		if d.failed(b) {
			continue
		}
		if b.URL == nil && !d.failed(&b.URL) {
			d.add(d.pos(b), "backend needs a url")
		}
		if b.Weight < 1 || b.Weight > 1000 {
			d.add(d.pos(&b.Weight), "weight must be 1..1000, got %d", b.Weight)
		}
	}
	if !slices.Contains(balances, u.Balance) {
		d.add(d.pos(&u.Balance), "unknown balance %q: expected %s", u.Balance, orList(balances))
	}
	if u.Balance == "header_hash" && u.HashHeader == "" {
		d.add(d.pos(&u.Balance), "balance header_hash needs hash_header: the request header to hash")
	}
	if u.HashHeader != "" && !validHeaderName(u.HashHeader) {
		d.add(d.pos(&u.HashHeader), "bad hash_header %q", u.HashHeader)
	}
	if s := u.Sticky; s != nil {
		if !validHeaderName(s.Cookie) || strings.ContainsAny(s.Cookie, "=,; ") {
			d.add(d.pos(&s.Cookie, s), "bad sticky cookie name %q", s.Cookie)
		}
		if s.Secret != "" && len(s.Secret) < 16 {
			d.add(d.pos(&s.Secret), "sticky secret must be at least 16 characters")
		}
		if s.MaxAge < 0 {
			d.add(d.pos(&s.MaxAge), "sticky max_age must not be negative")
		}
	}
	for _, b := range u.Backends {
		if b != nil && b.MaxConns < 0 {
			d.add(d.pos(&b.MaxConns), "max_conns must not be negative (0 means no cap), got %d", b.MaxConns)
		}
	}
	if ph := u.PassiveHealth; ph.MaxFails < 0 {
		d.add(d.pos(&u.PassiveHealth.MaxFails), "passive_health max_fails must not be negative (0 turns it off)")
	} else if ph.MaxFails > 0 {
		if ph.Window <= 0 {
			d.add(d.pos(&u.PassiveHealth.Window), "passive_health window must be more than 0")
		}
		if ph.Cooldown <= 0 {
			d.add(d.pos(&u.PassiveHealth.Cooldown), "passive_health cooldown must be more than 0")
		}
		if ph.MaxCooldown < ph.Cooldown {
			d.add(d.pos(&u.PassiveHealth.MaxCooldown), "passive_health max_cooldown (%s) must be at least cooldown (%s)", ph.MaxCooldown.D(), ph.Cooldown.D())
		}
		if ph.MaxEjectedPercent < 0 || ph.MaxEjectedPercent > 100 {
			d.add(d.pos(&u.PassiveHealth.MaxEjectedPercent), "passive_health max_ejected_percent must be 0..100, got %d", ph.MaxEjectedPercent)
		}
	}
	if rt := u.Retries; rt.Max < 0 || rt.Max > 10 {
		d.add(d.pos(&u.Retries.Max), "retries max must be 0..10, got %d", rt.Max)
	}
	if rt := u.Retries; rt.BudgetPercent < 0 || rt.BudgetPercent > 100 {
		d.add(d.pos(&u.Retries.BudgetPercent), "retries budget_percent must be 0..100, got %d", rt.BudgetPercent)
	}
	if u.Retries.MaxBody > 16<<20 {
		d.add(d.pos(&u.Retries.MaxBody), "retries max_body must be at most 16MiB (it is buffered in memory)")
	}
	if u.Timeouts.Queue < 0 {
		d.add(d.pos(&u.Timeouts.Queue), "timeouts queue must not be negative")
	}
	if h := u.HealthCheck; h != nil {
		if !strings.HasPrefix(h.Path, "/") {
			d.add(d.pos(&h.Path), "health_check path must start with \"/\", got %q", h.Path)
		}
		if h.Interval <= 0 {
			d.add(d.pos(&h.Interval), "health_check interval must be more than 0")
		}
		if h.Timeout <= 0 {
			d.add(d.pos(&h.Timeout), "health_check timeout must be more than 0")
		}
		if strings.ContainsAny(h.Host, " \t\r\n\x00/") {
			d.add(d.pos(&h.Host), "bad health_check host %q", h.Host)
		}
		if h.Timeout > h.Interval && h.Interval > 0 {
			d.add(d.pos(&h.Timeout), "health_check timeout (%s) must not exceed interval (%s)", h.Timeout.D(), h.Interval.D())
		}
		if h.Rise < 1 {
			d.add(d.pos(&h.Rise), "rise must be at least 1, got %d", h.Rise)
		}
		if h.Fall < 1 {
			d.add(d.pos(&h.Fall), "fall must be at least 1, got %d", h.Fall)
		}
	}
}

func unknownUpstream(name string, known []string) string {
	msg := fmt.Sprintf("unknown upstream %q", name)
	switch {
	case len(known) == 0:
		msg += " (no upstreams are defined)"
	case len(known) <= 8:
		msg += " (known: " + strings.Join(known, ", ") + ")"
	}
	return msg
}

func (d *decoder) validateSites(cfg *Config, names []string) {
	if len(cfg.Sites) == 0 && !d.failed(&cfg.Sites) {
		d.add(d.pos(&cfg.Sites, cfg), "no sites: add at least one under sites:")
	}
	type owner struct {
		site *Site
		at   position
	}
	hosts := map[string]owner{}
	for _, s := range cfg.Sites {
		if d.failed(s) {
			continue
		}
		if len(s.Hosts) == 0 && !d.failed(&s.Hosts) {
			d.add(d.pos(&s.Hosts, s), "site needs at least one host")
		}
		d.validateSiteHeaders(s)
		for i, raw := range s.Hosts {
			at := d.pos(&s.Hosts[i])
			h, msg := normalizeHost(raw)
			if msg != "" {
				d.add(at, "bad host %q: %s", raw, msg)
				continue
			}
			s.Hosts[i] = h
			if (s.TLS.Mode == TLSAuto || s.TLS.Mode == "") && (h == "*" || strings.HasPrefix(h, "*.")) && !localName(h) {
				d.add(at, "host %q needs tls: on_demand, internal, off or a {cert, key} pair: tls: auto obtains certificates for exact names only (HTTP-01 and TLS-ALPN-01 cannot validate wildcards)", h)
			}
			switch first, dup := hosts[h]; {
			case !dup:
				hosts[h] = owner{s, at}
			case first.site == s:
				d.add(at, "host %q is listed twice in this site (first at line %d)", h, first.at.Line)
			default:
				fs := d.pos(first.site)
				d.add(at, "host %q already used by the site at %s:%d:%d", h, d.file, fs.Line, fs.Col)
			}
		}
		for i, e := range s.Encode {
			if !slices.Contains(encodings, e) {
				d.add(d.pos(&s.Encode[i]), "unknown encoding %q: expected %s", e, orList(encodings))
			}
		}
		if len(s.Routes) == 0 && !d.failed(&s.Routes) {
			d.add(d.pos(&s.Routes, s), "site needs at least one route")
		}
		paths := map[string]position{}
		for _, r := range s.Routes {
			if d.failed(r) {
				continue
			}
			if d.checkPath(r) {
				if first, dup := paths[r.Path]; dup {
					d.add(d.pos(&r.Path, r), "duplicate route path %q (first at line %d)", r.Path, first.Line)
				} else {
					paths[r.Path] = d.pos(&r.Path, r)
				}
			}
			d.validateRoute(cfg, s, r, names)
		}
	}
}

// checkPath reports whether r.Path is a usable prefix, reporting why not.
func (d *decoder) checkPath(r *Route) bool {
	p, at := r.Path, d.pos(&r.Path, r)
	var why string
	switch {
	case !strings.HasPrefix(p, "/"):
		why = `must start with "/"`
	case slices.Contains(strings.Split(p, "/"), "..") || slices.Contains(strings.Split(p, "/"), "."):
		why = `must not contain "." or ".." segments`
	case strings.Contains(p, "%"):
		why = `must be written decoded (requests are matched on their decoded path): use "/café/" rather than "/caf%C3%A9/"`
	case strings.Contains(p, "//"):
		why = `must not contain "//"`
	case strings.ContainsAny(p, "?#"):
		why = `must not contain "?" or "#"`
	case strings.ContainsFunc(p, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		why = "must not contain control characters"
	default:
		return true
	}
	d.add(at, "bad route path %q: %s", p, why)
	return false
}

func (d *decoder) validateRoute(cfg *Config, s *Site, r *Route, names []string) {
	var actions []string
	if r.Upstream != nil || d.failed(&r.Upstream) {
		actions = append(actions, "upstream")
	}
	if r.Respond != nil || d.failed(&r.Respond) {
		actions = append(actions, "respond")
	}
	if r.Redirect != nil || d.failed(&r.Redirect) {
		actions = append(actions, "redirect")
	}
	if r.Static != nil || d.failed(&r.Static) {
		actions = append(actions, "static")
	}
	switch {
	case len(actions) == 0:
		d.add(d.pos(r), "route has no action (upstream, respond, redirect or static)")
	case len(actions) > 1:
		d.add(d.pos(r), "route has more than one action: %s", strings.Join(actions[:len(actions)-1], ", ")+" and "+actions[len(actions)-1])
	}
	if r.WebSocket.MaxTunnels < 1 {
		d.add(d.pos(&r.WebSocket.MaxTunnels, &r.WebSocket, r), "websocket max_tunnels must be at least 1, got %d", r.WebSocket.MaxTunnels)
	}
	if r.WebSocket.IdleTimeout <= 0 {
		d.add(d.pos(&r.WebSocket.IdleTimeout, &r.WebSocket, r), "websocket idle_timeout must be more than 0")
	}
	if r.StripPrefix && r.Upstream == nil && !d.failed(&r.Upstream) {
		d.add(d.pos(&r.StripPrefix), "strip_prefix needs an upstream")
	}
	if u := r.Upstream; u != nil {
		d.resolveUpstream(cfg, s, r, names)
	}
	if rs := r.Respond; rs != nil {
		if rs.Status < 200 || rs.Status > 599 {
			d.add(d.pos(&rs.Status), "respond status must be 200..599, got %d", rs.Status)
		}
		if rs.Body != "" && (rs.Status == 204 || rs.Status == 304) {
			d.add(d.pos(&rs.Body), "respond status %d cannot have a body", rs.Status)
		}
		for name, v := range rs.Headers {
			if !validHeaderName(name) {
				d.add(d.pos(&rs.Headers), "bad header name %q", name)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				d.add(d.pos(&rs.Headers), "header %q: value must not contain line breaks", name)
			}
		}
	}
	if rd := r.Redirect; rd != nil {
		switch to := rd.To; {
		case to == "":
			d.add(d.pos(rd), `redirect needs "to": an absolute http(s) URL or a path starting with "/"`)
		case strings.ContainsAny(to, "\r\n\x00"):
			d.add(d.pos(&rd.To), "redirect to %q must not contain line breaks", to)
		case strings.HasPrefix(to, "/") && !strings.HasPrefix(to, "//"):
		case checkHTTPURL(to) != "":
			d.add(d.pos(&rd.To), `redirect to %q must be an absolute http(s) URL or a path starting with "/"`, to)
		}
		switch rd.Status {
		case 301, 302, 303, 307, 308:
		default:
			d.add(d.pos(&rd.Status), "redirect status must be 301, 302, 303, 307 or 308, got %d", rd.Status)
		}
	}
	if rl := r.RateLimit; rl != nil {
		if rl.Requests < 1 {
			d.add(d.pos(&rl.Requests, rl), "rate_limit requests must be at least 1, got %d", rl.Requests)
		}
		if rl.Per <= 0 {
			d.add(d.pos(&rl.Per), "rate_limit per must be more than 0")
		}
		if rl.Burst < 1 && d.has(&rl.Burst) {
			d.add(d.pos(&rl.Burst), "rate_limit burst must be at least 1, got %d", rl.Burst)
		}
		if rl.MaxClients < 1 || rl.MaxClients > 10_000_000 {
			d.add(d.pos(&rl.MaxClients), "rate_limit max_clients must be 1..10000000, got %d", rl.MaxClients)
		}
	}
	if a := r.Auth; a != nil {
		d.checkAuth(a)
	}
	d.checkHeaderOps(&r.Headers.Request, true)
	d.checkHeaderOps(&r.Headers.Response, false)
	if st := r.Static; st != nil && st.Root == "" {
		d.add(d.pos(&st.Root, st), "static needs a root directory")
	}
}

// resolveUpstream points r.Upstream.Pool at its pool, creating the
// anonymous pool of an inline URL list.
func (d *decoder) resolveUpstream(cfg *Config, s *Site, r *Route, names []string) {
	ref := r.Upstream
	if ref.Name != "" {
		if p := cfg.Upstreams[ref.Name]; p != nil && upstreamName.MatchString(ref.Name) {
			ref.Pool = p
		} else {
			d.add(d.pos(ref), "%s", unknownUpstream(ref.Name, names))
		}
		return
	}
	host := ""
	if len(s.Hosts) > 0 {
		host = s.Hosts[0]
	}
	pool := &Upstream{Name: "route:" + host + r.Path}
	for _, u := range ref.URLs {
		if u != nil {
			pool.Backends = append(pool.Backends, &Backend{URL: u, Weight: 1})
		}
	}
	d.upstreamDefaults(pool)
	d.at[pool] = d.pos(ref)
	if _, taken := cfg.Upstreams[pool.Name]; !taken {
		cfg.Upstreams[pool.Name] = pool
	}
	ref.Pool = pool
}

// validHeaderName reports whether name is an HTTP token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// normalizeHost lower-cases a site host and strips any port; it returns a
// reason when the host is not a DNS name, a "*." wildcard, an IP address or
// "*".
func normalizeHost(raw string) (string, string) {
	h := strings.ToLower(strings.TrimSpace(raw))
	switch {
	case h == "":
		return "", "empty host"
	case h == "*":
		return h, ""
	case strings.HasPrefix(h, "["):
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", `missing "]"`
		}
		if rest := h[end+1:]; rest != "" {
			if p, ok := strings.CutPrefix(rest, ":"); !ok || !validPort(p) {
				return "", "bad port"
			}
		}
		a, err := netip.ParseAddr(h[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", "not an IPv6 address"
		}
		return a.String(), ""
	case strings.Count(h, ":") == 1:
		host, port, _ := strings.Cut(h, ":")
		if !validPort(port) {
			return "", "bad port"
		}
		h = host
	case strings.Count(h, ":") > 1:
		a, err := netip.ParseAddr(h)
		if err != nil || a.Zone() != "" {
			return "", "not an IPv6 address (write [::1]:port to add a port)"
		}
		return a.String(), ""
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String(), ""
	}
	name := strings.TrimSuffix(h, ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name = rest
	}
	if strings.Contains(name, "*") {
		return "", `a wildcard is only allowed as the whole first label, as in "*.example.com"`
	}
	if len(name) > 253 {
		return "", "name too long"
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", "empty or too long label"
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", "a label must not start or end with \"-\""
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", "use letters, digits and \"-\" (write internationalized names in xn-- form)"
			}
		}
	}
	return strings.TrimSuffix(h, "."), ""
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && p[0] != '+'
}

func fallbackEAB(f *ACMEFallback) *EAB {
	if f == nil {
		return nil
	}
	return f.EAB
}

// localName reports whether a wildcard host is under a local-only domain,
// which tls: auto serves from the internal CA.
func localName(h string) bool {
	for _, suffix := range []string{".localhost", ".internal", ".local"} {
		if strings.HasSuffix(h, suffix) {
			return true
		}
	}
	return false
}

// checkReadable reports a file that cannot be read, at the value's position.
func (d *decoder) checkReadable(ptr *string, what string, parent any) {
	if *ptr == "" {
		return
	}
	f, err := os.Open(*ptr)
	if err != nil {
		d.add(d.pos(ptr, parent), "%s %q cannot be read: %s", what, *ptr, errors.Unwrap(err))
		return
	}
	f.Close()
}

// validateFiles checks that every file the config names can be read, so
// `validate` catches what `run` would otherwise only find at startup.
func (d *decoder) validateFiles(cfg *Config) {
	g := &cfg.Global
	d.checkReadable(&g.ACME.CARoot, "acme ca_root", &g.ACME)
	if f := g.ACME.Fallback; f != nil {
		d.checkReadable(&f.CARoot, "acme fallback ca_root", f)
	}
	for _, u := range cfg.Upstreams {
		d.checkReadable(&u.TLS.CA, "upstream tls ca", u)
	}
	for _, s := range cfg.Sites {
		if s.TLS.Mode == TLSManual {
			d.checkReadable(&s.TLS.Cert, "tls cert", &s.TLS)
			d.checkReadable(&s.TLS.Key, "tls key", &s.TLS)
		}
	}
}

// loopbackHostPort reports whether a host:port names a loopback address
// ("localhost" counts).
func loopbackHostPort(hp string) bool {
	host, _, err := net.SplitHostPort(hp)
	return err == nil && IsLoopbackHost(host)
}

// IsLoopbackHost reports whether host (no port; IPv6 with or without
// brackets) is "localhost" or a loopback address.
func IsLoopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// framing are headers a route may not edit: they describe the message
// itself, and net/http or the forwarder owns them.
var framing = []string{"Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Te", "Trailer", "Keep-Alive", "Proxy-Connection"}

// checkHeaderOps validates and canonicalises one route header edit.
func (d *decoder) checkHeaderOps(ops *HeaderOps, request bool) {
	check := func(name string) (string, bool) {
		if !validHeaderName(name) {
			d.add(d.pos(ops), "bad header name %q", name)
			return "", false
		}
		c := textproto.CanonicalMIMEHeaderKey(name)
		if slices.Contains(framing, c) || (request && c == "Host") {
			d.add(d.pos(ops), "header %s cannot be edited by a route", c)
			return "", false
		}
		return c, true
	}
	canon := func(m map[string]string) map[string]string {
		if len(m) == 0 {
			return m
		}
		out := make(map[string]string, len(m))
		for _, name := range slices.Sorted(maps.Keys(m)) {
			v := m[name]
			if strings.ContainsAny(v, "\r\n\x00") {
				d.add(d.pos(ops), "header %q: value must not contain line breaks", name)
			}
			if c, ok := check(name); ok {
				out[c] = v
			}
		}
		return out
	}
	ops.Add, ops.Set = canon(ops.Add), canon(ops.Set)
	for i, name := range ops.Remove {
		if c, ok := check(name); ok {
			ops.Remove[i] = c
		}
	}
}

// validateSiteHeaders checks the security-headers settings of s.
func (d *decoder) validateSiteHeaders(s *Site) {
	h := &s.Headers
	for _, v := range []*string{&h.CSP, &h.PermissionsPolicy, &h.ReferrerPolicy, &h.FrameOptions} {
		if strings.ContainsAny(*v, "\r\n\x00") {
			d.add(d.pos(v, h, s), "header value must not contain line breaks")
		}
	}
	switch strings.ToLower(h.FrameOptions) {
	case "", "off", "deny", "sameorigin":
	default:
		d.add(d.pos(&h.FrameOptions), "frame_options must be DENY, SAMEORIGIN or off, got %q", h.FrameOptions)
	}
	if x := h.HSTS; x != nil && x.MaxAge < 0 {
		d.add(d.pos(&x.MaxAge, x), "hsts max_age must not be negative")
	}
}

// checkAuth validates a route's auth block. Hashes are checked for shape
// only (bcrypt itself is not imported here): "$2a$", "$2b$" or "$2y$", a
// two-digit cost 4..31 and 53 characters of salt and hash.
func (d *decoder) checkAuth(a *Auth) {
	if len(a.Basic) == 0 && len(a.Bearer) == 0 {
		d.add(d.pos(a), "auth needs basic users or bearer tokens")
	}
	if strings.ContainsAny(a.Realm, "\"\\\r\n") {
		d.add(d.pos(&a.Realm), "auth realm must not contain quotes, backslashes or line breaks")
	}
	for _, user := range slices.Sorted(maps.Keys(a.Basic)) {
		if user == "" || strings.ContainsAny(user, ":\r\n") {
			d.add(d.pos(&a.Basic, a), "bad basic auth user %q: must be non-empty without \":\"", user)
		}
		if !bcryptShape(a.Basic[user]) {
			d.add(d.pos(&a.Basic, a), "basic auth user %q: password must be a bcrypt hash ($2b$...), for example from `htpasswd -nbB user password`", user)
		}
	}
	for i, tok := range a.Bearer {
		switch {
		case tok == "":
			d.add(d.pos(&a.Bearer[i]), "bearer token is empty (is its ${VAR} set?)")
		case len(tok) < 16:
			d.add(d.pos(&a.Bearer[i]), "bearer token must be at least 16 characters")
		case strings.ContainsAny(tok, " \t\r\n"):
			d.add(d.pos(&a.Bearer[i]), "bearer token must not contain spaces or line breaks")
		}
	}
}

func bcryptShape(h string) bool {
	if len(h) != 60 || h[0] != '$' || h[3] != '$' || h[6] != '$' {
		return false
	}
	switch h[1:3] {
	case "2a", "2b", "2y":
	default:
		return false
	}
	cost, err := strconv.Atoi(h[4:6])
	return err == nil && cost >= 4 && cost <= 31
}
