package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

var _ flag.Value = (*stringList)(nil)

// cmdProxy is the one-line reverse proxy: it builds the config a user would
// have written by hand and serves it exactly like `run` does.
func cmdProxy(args []string, stderr io.Writer) int {
	fs := flagSet("proxy", "--from HOST[:PORT] --to ADDR [--to ADDR ...]", stderr)
	from := fs.String("from", "", "address to serve: HOST[:PORT] (port default 80); an IP or localhost also sets the listen address")
	var to stringList
	fs.Var(&to, "to", "backend `ADDR` (host:port or http://, https://, h2c:// URL); repeat for round-robin with failover")
	level := logLevelFlag(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	doc, err := proxyConfig(*from, to)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse proxy:", err)
		fs.Usage()
		return exitUsage
	}
	log, err := newLogger(*level, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse proxy:", err)
		return exitUsage
	}
	cfg, err := config.Parse("(proxy flags)", doc)
	if err != nil {
		logConfigError(log, err)
		return exitFail
	}
	return serve(cfg, nil, "", log)
}

// proxyConfig turns the proxy flags into a YAML config document. Until
// automatic TLS is built the proxy serves plain HTTP on PORT for any Host.
func proxyConfig(from string, to []string) ([]byte, error) {
	if from == "" {
		return nil, fmt.Errorf("--from is required")
	}
	if len(to) == 0 {
		return nil, fmt.Errorf("at least one --to is required")
	}
	host, port := from, 80
	if h, p, err := net.SplitHostPort(from); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--from %q: bad port", from)
		}
		host, port = h, n
	}
	listen := "0.0.0.0"
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		listen = ip.String()
	} else if strings.EqualFold(host, "localhost") {
		listen = "127.0.0.1"
	}
	backends := make([]string, 0, len(to))
	for _, t := range to {
		u := t
		if !strings.Contains(t, "://") {
			u = "http://" + t
		}
		pu, err := url.Parse(u)
		if err != nil || pu.Host == "" {
			return nil, fmt.Errorf("--to %q: want host:port or a URL", t)
		}
		switch {
		case pu.Scheme != "http" && pu.Scheme != "https" && pu.Scheme != "h2c":
			return nil, fmt.Errorf("--to %q: scheme must be http, https or h2c", t)
		case (pu.Path != "" && pu.Path != "/") || pu.RawQuery != "" || pu.Fragment != "" || pu.User != nil:
			return nil, fmt.Errorf("--to %q: give only scheme://host:port (no path, query or credentials)", t)
		}
		backends = append(backends, u)
	}
	doc := map[string]any{
		"global": map[string]any{"listen": listen, "http_port": port, "admin": "off"},
		"sites": []any{map[string]any{
			"hosts":  []string{"*"},
			"tls":    "off",
			"routes": []any{map[string]any{"path": "/", "upstream": backends}},
		}},
	}
	return yaml.Marshal(doc)
}
