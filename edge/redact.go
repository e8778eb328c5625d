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
// secrets (EAB keys, sticky secrets, auth hashes and tokens, passwords in
// URLs) replaced by "[redacted]", for GET /config.
func RedactedConfig(cfg *config.Config) any {
	return plain(reflect.ValueOf(cfg), "")
}

var (
	durationType = reflect.TypeFor[config.Duration]()
	sizeType     = reflect.TypeFor[config.Size]()
	urlPtrType   = reflect.TypeFor[*url.URL]()
	tlsType      = reflect.TypeFor[config.TLS]()
	refType      = reflect.TypeFor[config.UpstreamRef]()
	prefixType   = reflect.TypeFor[config.Prefix]()
)

func plain(v reflect.Value, key string) any {
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
		return v.Interface().(*url.URL).Redacted()
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
			urls[i] = u.Redacted()
		}
		return urls
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return plain(v.Elem(), key)
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			out[name] = plain(v.Field(i), name)
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return nil
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = plain(v.Index(i), key)
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		out := make(map[string]any, v.Len())
		for _, k := range v.MapKeys() {
			out[k.String()] = plain(v.MapIndex(k), "")
		}
		return out
	}
	return v.Interface()
}
