package config

import (
	"fmt"
)

// source remembers, for a loaded Config, the file name and the positions of
// the values Unsupported reports, keyed by a path such as "sites[0].tls".
// It holds only comparable plain data, so two loads of one file are
// reflect.DeepEqual.
type source struct {
	file string
	pos  map[string]position
}

func sitePath(i int) string     { return fmt.Sprintf("sites[%d]", i) }
func routePath(i, j int) string { return fmt.Sprintf("sites[%d].routes[%d]", i, j) }
func tcpPath(i int) string      { return fmt.Sprintf("tcp[%d]", i) }

const etcdPath = "global.storage.etcd"

// unsupportedPositions records where the values Unsupported looks at came
// from.
func (d *decoder) unsupportedPositions(cfg *Config) source {
	src := source{file: d.file, pos: map[string]position{}}
	for i, s := range cfg.Sites {
		src.pos[sitePath(i)] = d.pos(s)
		src.pos[sitePath(i)+".tls"] = d.pos(&s.TLS, s)
		for j, r := range s.Routes {
			src.pos[routePath(i, j)+".static"] = d.pos(&r.Static, r)
		}
	}
	for i, t := range cfg.TCP {
		src.pos[tcpPath(i)] = d.pos(t)
	}
	if e := cfg.Global.Storage.Etcd; e != nil {
		src.pos[etcdPath] = d.pos(e)
	}
	return src
}

// Unsupported lists, with positions, configured features that this build
// cannot serve yet: a static route, a tcp entry, storage.etcd. Serving such a config would change traffic, so `run`
// and `validate` treat these as errors. The result is nil when everything
// can be served; it is sorted by position.
func (c *Config) Unsupported() Errors {
	p := problems{file: c.src.file}
	if p.file == "" {
		p.file = c.File
	}
	at := func(key string) position { return c.src.pos[key] }
	for i, s := range c.Sites {
		for j, r := range s.Routes {
			if r.Static != nil {
				p.add(at(routePath(i, j)+".static"), "static routes are not available in this build yet")
			}
		}
	}
	for i := range c.TCP {
		p.add(at(tcpPath(i)), "tcp proxying is not available in this build yet")
	}
	if c.Global.Storage.Etcd != nil {
		p.add(at(etcdPath), "storage.etcd is not available in this build yet; remove it to keep certificates in data_dir")
	}
	if len(p.list) == 0 {
		return nil
	}
	return p.sorted()
}

// warnings lists settings that are accepted but have no effect in this
// build, as "FILE:LINE:COL: message" sorted by position.
func (d *decoder) warnings(cfg *Config) []string {
	w := problems{file: d.file}
	for _, s := range cfg.Sites {
		if len(s.Encode) > 0 {
			w.add(d.pos(&s.Encode), "encode is not built yet; responses are not compressed")
		}
	}
	for _, u := range cfg.Upstreams {
		if u.Sticky != nil && u.Balance != "cookie" && d.has(u.Sticky) {
			w.add(d.pos(u.Sticky), "sticky has no effect unless balance is cookie")
		}
		if ph := u.PassiveHealth; ph.MaxFails > 0 && ph.MaxEjectedPercent == 0 {
			w.add(d.pos(&u.PassiveHealth.MaxEjectedPercent), "passive_health max_ejected_percent 0 means no backend is ever ejected")
		}
		if u.HashHeader != "" && u.Balance != "header_hash" {
			w.add(d.pos(&u.HashHeader), "hash_header has no effect unless balance is header_hash")
		}
		if s := u.Sticky; u.Balance == "cookie" && s != nil && s.Secret == "" {
			w.add(d.pos(&u.Balance), "balance cookie without sticky.secret: a random key is used, so affinity does not survive a restart or span instances")
		}
	}
	if len(w.list) == 0 {
		return nil
	}
	out := make([]string, 0, len(w.list))
	for _, e := range w.sorted() {
		out = append(out, e.Error())
	}
	return out
}
