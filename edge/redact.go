package edge

import (
	"net/url"
	"reflect"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// redacted is shown instead of a secret.
const redacted = "[redacted]"

// secretKeys are the config keys whose values never leave the process.
var secretKeys = map[string]bool{"mac_key": true, "secret": true, "bearer": true, "basic": true, "key_id": true}

// RedactedConfig renders cfg as plain data keyed by the YAML key names, with
// secrets replaced by "[redacted]", for GET /config: EAB keys, sticky
// secrets, auth hashes and tokens, the values (not the names) of every
// header edit and respond header, and the userinfo and query of every URL
// (backends, acme.ca, acme.fallback.ca, on_demand.ask, etcd endpoints),
// which are shown as scheme://host/path, plus "?[redacted]" when the URL
// had a query.
func RedactedConfig(cfg *config.Config) any {
	return plain(reflect.ValueOf(cfg), "", asIs)
}

// show says how plain renders a value beyond its type's default.
type show int

const (
	asIs         show = iota
	asURL             // a string (or strings) holding a URL: see redactURL
	valuesHidden      // a map of header name -> value: names kept, values redacted
)

// urlFields are the string fields, by struct and YAML key, that hold a URL
// whose userinfo or query may carry a credential.
var urlFields = map[reflect.Type]map[string]bool{
	reflect.TypeFor[config.ACME]():         {"ca": true},
	reflect.TypeFor[config.ACMEFallback](): {"ca": true},
	reflect.TypeFor[config.OnDemand]():     {"ask": true},
	reflect.TypeFor[config.EtcdStorage]():  {"endpoints": true},
}

// headerValueFields are the maps, by struct and YAML key, of header names
// to values; a value may be a credential sent to a backend or a client
// (Authorization, X-Api-Key, Cookie...), so every value is hidden.
var headerValueFields = map[reflect.Type]map[string]bool{
	reflect.TypeFor[config.HeaderOps](): {"add": true, "set": true},
	reflect.TypeFor[config.Respond]():   {"headers": true},
}

// redactURL shows a URL as scheme://host/path, without userinfo, query or
// fragment; "?[redacted]" marks a dropped query. A value without a scheme
// (an etcd endpoint "host:port") is shown as host/path. What does not parse
// as a URL is redacted whole.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	raw, scheme := s, true
	if !strings.Contains(s, "://") {
		raw, scheme = "//"+s, false
	}
	u, err := url.Parse(raw)
	if err != nil {
		return redacted
	}
	out := u.Host + u.EscapedPath()
	if scheme {
		out = u.Scheme + "://" + out
	}
	if u.RawQuery != "" || u.ForceQuery {
		out += "?" + redacted
	}
	return out
}

func redactURLValue(u *url.URL) string {
	if u == nil {
		return ""
	}
	return redactURL(u.String())
}

var (
	durationType = reflect.TypeFor[config.Duration]()
	sizeType     = reflect.TypeFor[config.Size]()
	urlPtrType   = reflect.TypeFor[*url.URL]()
	tlsType      = reflect.TypeFor[config.TLS]()
	refType      = reflect.TypeFor[config.UpstreamRef]()
	prefixType   = reflect.TypeFor[config.Prefix]()
)

func plain(v reflect.Value, key string, how show) any {
	if secretKeys[key] && !v.IsZero() {
		if v.Kind() == reflect.Map {
			out := map[string]string{}
			for _, k := range v.MapKeys() {
				out[k.String()] = redacted // user names stay, hashes go
			}
			return out
		}
		return redacted
	}
	switch v.Type() {
	case durationType:
		return time.Duration(v.Int()).String()
	case sizeType:
		return v.Int()
	case urlPtrType:
		if v.IsNil() {
			return nil
		}
		return redactURLValue(v.Interface().(*url.URL))
	case prefixType:
		return v.Interface().(config.Prefix).String()
	case tlsType:
		t := v.Interface().(config.TLS)
		if t.Mode == config.TLSManual {
			return map[string]string{"cert": t.Cert, "key": t.Key}
		}
		return string(t.Mode)
	case refType:
		r := v.Interface().(config.UpstreamRef)
		if r.Name != "" {
			return r.Name
		}
		urls := make([]string, len(r.URLs))
		for i, u := range r.URLs {
			urls[i] = redactURLValue(u)
		}
		return urls
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return plain(v.Elem(), key, how)
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			fhow := asIs
			switch {
			case urlFields[t][name]:
				fhow = asURL
			case headerValueFields[t][name]:
				fhow = valuesHidden
			}
			out[name] = plain(v.Field(i), name, fhow)
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return nil
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = plain(v.Index(i), key, how)
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		out := make(map[string]any, v.Len())
		for _, k := range v.MapKeys() {
			if how == valuesHidden {
				out[k.String()] = redacted
				continue
			}
			out[k.String()] = plain(v.MapIndex(k), "", asIs)
		}
		return out
	case reflect.String:
		if how == asURL {
			return redactURL(v.String())
		}
	}
	return v.Interface()
}
