package config

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// decoder walks a yaml.Node tree into the config types, driven by their
// `yaml:"..."` tags, recording where every value came from.
type decoder struct {
	problems
	lookup func(string) (string, bool) // environment

	// at maps a pointer to a decoded value (for example &site.TLS, or a
	// *Site itself) to the position of its YAML node. Presence in at also
	// means "written in the file", which is how defaults tell an explicit 0
	// from an absent key.
	at map[any]position
	// keyAt maps a pointer-typed map element (an *Upstream) to the position
	// of its key.
	keyAt map[any]position
	// bad holds pointers whose node had the wrong shape, so that validation
	// does not pile a second error ("site needs a host") on the first.
	bad map[any]bool
	// work counts nodes visited; aliases can make a small file expand to a
	// huge tree ("billion laughs"), so decoding stops at maxWork.
	work int
}

const (
	maxDepth = 64
	maxWork  = 1 << 20
)

// tooMuch counts one unit of work and reports (once) when the document
// expands beyond maxWork nodes.
func (d *decoder) tooMuch(n *yaml.Node) bool {
	d.work++
	if d.work == maxWork {
		d.errorf(n, "document too large (too many aliases?)")
	}
	return d.work >= maxWork
}

var (
	durationType = reflect.TypeFor[Duration]()
	sizeType     = reflect.TypeFor[Size]()
	prefixType   = reflect.TypeFor[Prefix]()
	urlPtrType   = reflect.TypeFor[*url.URL]()
	tlsType      = reflect.TypeFor[TLS]()
	refType      = reflect.TypeFor[UpstreamRef]()
	statusType   = reflect.TypeFor[StatusRange]()
)

// sectionNames name a struct type in "unknown key" messages.
var sectionNames = map[reflect.Type]string{
	reflect.TypeFor[Config]():        "the top level",
	reflect.TypeFor[Global]():        "global",
	reflect.TypeFor[ServerLimits]():  "limits",
	reflect.TypeFor[ACME]():          "acme",
	reflect.TypeFor[OnDemand]():      "on_demand",
	reflect.TypeFor[CacheSettings](): "cache",
	reflect.TypeFor[Storage]():       "storage",
	reflect.TypeFor[EtcdStorage]():   "etcd",
	reflect.TypeFor[Upstream]():      "upstream",
	reflect.TypeFor[Backend]():       "backend",
	reflect.TypeFor[HealthCheck]():   "health_check",
	reflect.TypeFor[Timeouts]():      "timeouts",
	reflect.TypeFor[UpstreamTLS]():   "upstream tls",
	reflect.TypeFor[Site]():          "site",
	reflect.TypeFor[tlsFiles]():      "tls",
	reflect.TypeFor[SiteHeaders]():   "headers",
	reflect.TypeFor[HSTS]():          "hsts",
	reflect.TypeFor[Route]():         "route",
	reflect.TypeFor[Respond]():       "respond",
	reflect.TypeFor[Redirect]():      "redirect",
	reflect.TypeFor[Static]():        "static",
	reflect.TypeFor[TCPProxy]():      "tcp entry",
}

// tlsFiles is the mapping form of a site's tls value.
type tlsFiles struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

func posOf(n *yaml.Node) position { return position{n.Line, n.Column} }

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.add(posOf(n), format, args...)
}

// has reports whether the value behind ptr was written in the file.
func (d *decoder) has(ptr any) bool { _, ok := d.at[ptr]; return ok }

// failed reports whether the value behind ptr had the wrong shape.
func (d *decoder) failed(ptr any) bool { return d.bad[ptr] }

// pos returns the position of the value behind the first ptr that was
// written in the file.
func (d *decoder) pos(ptrs ...any) position {
	for _, p := range ptrs {
		if at, ok := d.at[p]; ok {
			return at
		}
	}
	return position{}
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

// text returns the expanded text of a scalar node, or false after reporting
// that the node is not a scalar (want names the expected kind).
func (d *decoder) text(n *yaml.Node, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "expected %s, got %s", want, describe(n))
		return "", false
	}
	s, errs := expand(n.Value, d.lookup)
	for _, e := range errs {
		d.errorf(n, "%s", e)
	}
	return s, len(errs) == 0
}

// decode stores node n into the addressable value v and reports whether n
// had the right shape for v (errors inside a mapping do not count).
func (d *decoder) decode(n *yaml.Node, v reflect.Value, depth int) bool {
	for n.Kind == yaml.AliasNode && depth < maxDepth {
		n, depth = n.Alias, depth+1
	}
	if depth >= maxDepth {
		d.errorf(n, "document nested too deeply (alias loop?)")
		return false
	}
	if d.tooMuch(n) {
		return false
	}
	if isNull(n) {
		return true // absent: keep the zero value
	}
	ptr := v.Addr().Interface()
	d.at[ptr] = posOf(n)
	ok := d.decodeValue(n, v, depth)
	if !ok {
		// Forget the position, so that defaults apply and validation does
		// not judge the zero value a second time.
		delete(d.at, ptr)
		d.bad[ptr] = true
	}
	return ok
}

func (d *decoder) decodeValue(n *yaml.Node, v reflect.Value, depth int) bool {
	switch v.Type() {
	case durationType:
		return scalarInto(d, n, "a duration", v, parseDuration)
	case sizeType:
		return scalarInto(d, n, "a size", v, parseSize)
	case prefixType:
		return scalarInto(d, n, "an IP prefix", v, parsePrefix)
	case urlPtrType:
		return scalarInto(d, n, "a URL", v, parseBackendURL)
	case tlsType:
		return d.decodeTLS(n, v.Addr().Interface().(*TLS), depth)
	case refType:
		return d.decodeRef(n, v.Addr().Interface().(*UpstreamRef), depth)
	case statusType:
		return scalarInto(d, n, "a status code or range", v, parseStatusRange)
	}
	switch v.Kind() {
	case reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		if !d.decode(n, elem.Elem(), depth+1) {
			return false
		}
		v.Set(elem)
		return true
	case reflect.Struct:
		return d.decodeStruct(n, v, depth)
	case reflect.Slice:
		return d.decodeSlice(n, v, depth)
	case reflect.Map:
		return d.decodeMap(n, v, depth)
	case reflect.String:
		s, ok := d.text(n, "a string")
		v.SetString(s)
		return ok
	case reflect.Int, reflect.Int64:
		s, ok := d.text(n, "a number")
		if !ok {
			return false
		}
		i, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil || int64(int(i)) != i {
			if ne, _ := err.(*strconv.NumError); ne != nil && ne.Err == strconv.ErrRange {
				d.errorf(n, "number %s is out of range", s)
			} else {
				d.errorf(n, "expected a number, got %q", s)
			}
			return false
		}
		v.SetInt(i)
		return true
	case reflect.Bool:
		s, ok := d.text(n, "true or false")
		if !ok {
			return false
		}
		b, ok := parseBool(strings.TrimSpace(s))
		if !ok {
			d.errorf(n, "expected true or false, got %q", s)
			return false
		}
		v.SetBool(b)
		return true
	}
	panic(fmt.Sprintf("config: no decoder for %s", v.Type()))
}

// scalarInto decodes a scalar with parse and stores the result in v.
func scalarInto[T any](d *decoder, n *yaml.Node, want string, v reflect.Value, parse func(string) (T, error)) bool {
	s, ok := d.text(n, want)
	if !ok {
		return false
	}
	x, err := parse(s)
	if err != nil {
		d.errorf(n, "%s", err)
		return false
	}
	v.Set(reflect.ValueOf(x))
	return true
}

type pair struct{ key, val *yaml.Node }

// pairs returns the key/value pairs of mapping n with "<<" merge keys
// resolved (explicit keys win over merged ones). It reports duplicate and
// non-scalar keys.
func (d *decoder) pairs(n *yaml.Node, depth int) []pair {
	var out, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if d.tooMuch(k) {
			return nil
		}
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merged = append(merged, d.mergePairs(val, depth+1)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, "expected a key, got %s", describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k, "duplicate key %q (first at line %d)", k.Value, first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, val})
	}
	for _, p := range merged {
		if _, dup := seen[p.key.Value]; !dup {
			seen[p.key.Value] = p.key
			out = append(out, p)
		}
	}
	return out
}

// mergePairs returns the pairs a "<<" key merges in: one mapping, or a list
// of mappings where earlier ones win.
func (d *decoder) mergePairs(n *yaml.Node, depth int) []pair {
	for n.Kind == yaml.AliasNode && depth < maxDepth {
		n, depth = n.Alias, depth+1
	}
	if depth >= maxDepth {
		d.errorf(n, "document nested too deeply (alias loop?)")
		return nil
	}
	if d.tooMuch(n) {
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		return d.pairs(n, depth+1)
	case yaml.SequenceNode:
		var out []pair
		for _, m := range n.Content {
			out = append(out, d.mergePairs(m, depth+1)...)
		}
		return out
	}
	d.errorf(n, "expected a mapping to merge, got %s", describe(n))
	return nil
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, depth int) bool {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping, got %s", describe(n))
		return false
	}
	t := v.Type()
	fields := map[string]int{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		fields[tag] = i
		names = append(names, tag)
	}
	for _, p := range d.pairs(n, depth) {
		i, ok := fields[p.key.Value]
		if !ok {
			msg := fmt.Sprintf("unknown key %q in %s", p.key.Value, sectionNames[t])
			if s := closest(p.key.Value, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.errorf(p.key, "%s", msg)
			continue
		}
		d.decode(p.val, v.Field(i), depth+1)
	}
	return true
}

// decodeElem decodes a list item or map value; a null that stands for a
// struct becomes an empty struct, so that validation can point at it.
func (d *decoder) decodeElem(n *yaml.Node, v reflect.Value, depth int) {
	if isNull(n) && v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct && v.Type() != urlPtrType {
		elem := reflect.New(v.Type().Elem())
		d.at[v.Addr().Interface()] = posOf(n)
		d.at[elem.Interface()] = posOf(n)
		v.Set(elem)
		return
	}
	if isNull(n) {
		d.at[v.Addr().Interface()] = posOf(n) // for validation to point at
	}
	if isNull(n) && v.Type() == urlPtrType {
		d.errorf(n, "expected a URL, got null")
		d.bad[v.Addr().Interface()] = true
		return
	}
	d.decode(n, v, depth+1)
	if v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Kind() == reflect.Struct && v.Type() != urlPtrType {
		// Wrong shape (already reported): keep a placeholder that is
		// marked bad, so that lists never hold nil and validation skips it.
		elem := reflect.New(v.Type().Elem())
		d.bad[elem.Interface()] = true
		v.Set(elem)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, depth int) bool {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "expected a list, got %s", describe(n))
		return false
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	v.Set(s) // set first: element addresses must be the final ones
	for i, item := range n.Content {
		d.decodeElem(item, v.Index(i), depth)
	}
	return true
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, depth int) bool {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping, got %s", describe(n))
		return false
	}
	m := reflect.MakeMap(v.Type())
	for _, p := range d.pairs(n, depth) {
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decodeElem(p.val, ev, depth)
		if ev.Kind() == reflect.Pointer && !ev.IsNil() {
			d.keyAt[ev.Interface()] = posOf(p.key)
		}
		m.SetMapIndex(reflect.ValueOf(p.key.Value), ev)
	}
	v.Set(m)
	return true
}

// decodeTLS decodes a site's tls value: a mode name or {cert, key}.
func (d *decoder) decodeTLS(n *yaml.Node, t *TLS, depth int) bool {
	if n.Kind == yaml.MappingNode {
		var f tlsFiles
		d.decodeStruct(n, reflect.ValueOf(&f).Elem(), depth)
		if f.Cert == "" || f.Key == "" {
			d.errorf(n, "tls needs both cert and key files")
		}
		*t = TLS{Mode: TLSManual, Cert: f.Cert, Key: f.Key}
		return true
	}
	s, ok := d.text(n, "a tls mode")
	if !ok {
		return false
	}
	switch m := TLSMode(s); m {
	case TLSAuto, TLSInternal, TLSOnDemand, TLSOff:
		t.Mode = m
		return true
	}
	d.errorf(n, "bad tls value %q: expected auto, internal, on_demand, off or {cert: FILE, key: FILE}", s)
	return false
}

// decodeRef decodes a route's upstream value: a pool name or a list of
// backend URLs.
func (d *decoder) decodeRef(n *yaml.Node, r *UpstreamRef, depth int) bool {
	switch n.Kind {
	case yaml.ScalarNode:
		s, ok := d.text(n, "an upstream name")
		r.Name = s
		if ok && s == "" {
			d.errorf(n, "empty upstream name")
			return false
		}
		return ok
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			d.errorf(n, "empty upstream list: give a pool name or at least one backend URL")
			return false
		}
		return d.decode(n, reflect.ValueOf(&r.URLs).Elem(), depth+1)
	}
	d.errorf(n, "expected an upstream name or a list of backend URLs, got %s", describe(n))
	return false
}

// closest returns the name nearest to key within edit distance 2 (or a
// third of its length), or one that key begins or is the beginning of
// ("health" for "health_check"), or "".
func closest(key string, names []string) string {
	best, bestD := "", max(2, len(key)/3)+1
	for _, name := range names {
		dist := editDistance(key, name)
		if short := min(len(key), len(name)); short >= 4 && key[:short] == name[:short] {
			dist = min(dist, bestD-1)
		}
		if dist < bestD {
			best, bestD = name, dist
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
