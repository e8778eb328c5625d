package edge

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Plan lists what replacing config a with b would change, one line per
// item ("+ site example.com", "~ route example.com/api/: upstream changed",
// "- pool old", "~ global.acme.ca"), sorted, plus a last line when the
// change needs a restart. An empty plan means no change. Global settings
// are named by their YAML keys, never with their values (some are secrets).
func Plan(a, b *config.Config) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	for _, key := range globalChanges(reflect.ValueOf(a.Global), reflect.ValueOf(b.Global), "global") {
		add("~ %s", key)
	}
	as, bs := sitesByName(a), sitesByName(b)
	for name, sb := range bs {
		sa, ok := as[name]
		if !ok {
			add("+ site %s (%d routes)", name, len(sb.Routes))
			continue
		}
		if !slices.Equal(sa.Hosts, sb.Hosts) {
			add("~ site %s: hosts %v -> %v", name, sa.Hosts, sb.Hosts)
		}
		if sa.TLS != sb.TLS {
			add("~ site %s: tls %s -> %s", name, sa.TLS.Mode, sb.TLS.Mode)
		}
		if sa.Cache != sb.Cache || !reflect.DeepEqual(sa.Headers, sb.Headers) || !reflect.DeepEqual(sa.Encode, sb.Encode) || isOn(sa.HTTP3) != isOn(sb.HTTP3) {
			add("~ site %s: settings (cache, headers, encode or http3)", name)
		}
		ra, rb := routesByPath(sa), routesByPath(sb)
		for p, r := range rb {
			old, ok := ra[p]
			switch {
			case !ok:
				add("+ route %s%s", name, p)
			case !sameRoute(old, r):
				add("~ route %s%s", name, p)
			}
		}
		for p := range ra {
			if _, ok := rb[p]; !ok {
				add("- route %s%s", name, p)
			}
		}
	}
	for name := range as {
		if _, ok := bs[name]; !ok {
			add("- site %s", name)
		}
	}
	for name, u := range b.Upstreams {
		old, ok := a.Upstreams[name]
		switch {
		case strings.HasPrefix(name, "route:"):
			// inline pools are reported with their routes
		case !ok:
			add("+ pool %s (%d backends)", name, len(u.Backends))
		case !reflect.DeepEqual(old, u):
			add("~ pool %s", name)
		}
	}
	for name := range a.Upstreams {
		if _, ok := b.Upstreams[name]; !ok && !strings.HasPrefix(name, "route:") {
			add("- pool %s", name)
		}
	}
	slices.Sort(out)
	if why := needsRestart(a, b, needsTLS(a)); why != "" {
		out = append(out, "! needs a restart: "+why)
	}
	return out
}

func sitesByName(c *config.Config) map[string]*config.Site {
	m := make(map[string]*config.Site, len(c.Sites))
	for _, s := range c.Sites {
		if len(s.Hosts) > 0 {
			m[s.Hosts[0]] = s
		}
	}
	return m
}

func routesByPath(s *config.Site) map[string]*config.Route {
	m := make(map[string]*config.Route, len(s.Routes))
	for _, r := range s.Routes {
		if _, dup := m[r.Path]; !dup {
			m[r.Path] = r
		}
	}
	return m
}

// sameRoute compares two routes' settings, their upstream by configuration.
func sameRoute(a, b *config.Route) bool {
	ca, cb := *a, *b
	var ua, ub *config.Upstream
	if ca.Upstream != nil {
		ua = ca.Upstream.Pool
		ref := *ca.Upstream
		ref.Pool = nil
		ca.Upstream = &ref
	}
	if cb.Upstream != nil {
		ub = cb.Upstream.Pool
		ref := *cb.Upstream
		ref.Pool = nil
		cb.Upstream = &ref
	}
	if (ua == nil) != (ub == nil) || (ua != nil && !reflect.DeepEqual(withoutName(ua), withoutName(ub))) {
		return false
	}
	return reflect.DeepEqual(ca, cb)
}

func withoutName(u *config.Upstream) config.Upstream {
	c := *u
	c.Name = ""
	return c
}

var boolPtrType = reflect.TypeFor[*bool]()

// globalChanges lists the YAML keys (prefixed with prefix and a dot) of the
// fields of structs a and b (of one type) that differ, recursing into
// nested structs and into pointers to structs that both are set. A pointer
// set on one side only is one change; an unset *bool counts as true, its
// default.
func globalChanges(a, b reflect.Value, prefix string) []string {
	var out []string
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		key := prefix + "." + name
		fa, fb := a.Field(i), b.Field(i)
		switch {
		case f.Type == boolPtrType:
			if isOn(fa.Interface().(*bool)) != isOn(fb.Interface().(*bool)) {
				out = append(out, key)
			}
		case f.Type.Kind() == reflect.Struct && hasYAMLFields(f.Type):
			out = append(out, globalChanges(fa, fb, key)...)
		case f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct && hasYAMLFields(f.Type.Elem()):
			switch {
			case fa.IsNil() && fb.IsNil():
			case fa.IsNil() != fb.IsNil():
				out = append(out, key)
			default:
				out = append(out, globalChanges(fa.Elem(), fb.Elem(), key)...)
			}
		case !reflect.DeepEqual(fa.Interface(), fb.Interface()):
			out = append(out, key)
		}
	}
	return out
}

// hasYAMLFields reports whether struct type t has fields with YAML keys (a
// config section rather than a value such as netip.Prefix).
func hasYAMLFields(t reflect.Type) bool {
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			return true
		}
	}
	return false
}
