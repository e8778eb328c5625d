package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The origin serves these bodies; every proxy must return them byte for byte.
var (
	smallBody  = fixedBody("gatehouse bench: small 100-byte response ", 100)
	cachedBody = fixedBody("gatehouse bench: cacheable 100-byte response ", 100)
	bigBody    = func() []byte { // 1 MiB, not compressible by accident
		b := make([]byte, 1<<20)
		x := uint32(2463534242)
		for i := range b {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			b[i] = 'a' + byte(x%26)
		}
		return b
	}()
)

// fixedBody pads prefix with dots to n-1 bytes and ends it with a newline.
// Only characters nginx's `return` takes literally.
func fixedBody(prefix string, n int) string {
	return prefix + strings.Repeat(".", n-1-len(prefix)) + "\n"
}

const (
	variantPlain = "plain"
	variantCache = "cache"
)

// errNA marks a proxy/variant combination that does not exist (Caddy has no
// cache module in Debian's build).
var errNA = errors.New("n/a")

// originConfig is a separate nginx on the load CPU: a single process
// (master_process off) so that it is one child we can kill, no access log
// except the /cached counter used to prove cache hits.
func originConfig(dir string, port, conns int) string {
	return fmt.Sprintf(`# Origin for the benchmark: static answers, no logs (except the /cached counter).
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/origin.pid;
error_log %[1]s/error.log warn;
events { worker_connections %[3]d; }
http {
    access_log off;
    log_format count '$msec';
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # Never close a proxy's keep-alive connection (nginx's default is 1000 requests).
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path %[1]s/tmp-body;
    proxy_temp_path %[1]s/tmp-proxy;
    fastcgi_temp_path %[1]s/tmp-fastcgi;
    uwsgi_temp_path %[1]s/tmp-uwsgi;
    scgi_temp_path %[1]s/tmp-scgi;
    server {
        listen 127.0.0.1:%[2]d backlog=4096;
        root %[1]s/www;
        location = /small {
            default_type text/plain;
            return 200 "%[4]s";
        }
        location = /cached {
            # One log line per request that reaches the origin: the harness
            # counts them to prove that scenario 5 is served from the cache.
            access_log %[1]s/cached.log count;
            add_header Cache-Control "public, max-age=3600" always;
            default_type text/plain;
            return 200 "%[5]s";
        }
        location = /1m {
            # the 1 MiB file, sent with sendfile
        }
        location = /hdrs {
            # Echoes what the proxy forwarded, for the equivalence check.
            add_header Cache-Control no-store always;
            default_type text/plain;
            return 200 "host=$http_host|xff=$http_x_forwarded_for|xrip=$http_x_real_ip|xfp=$http_x_forwarded_proto\n";
        }
        location / { return 404; }
    }
}
`, dir, port, conns, strings.TrimSuffix(smallBody, "\n")+`\n`, strings.TrimSuffix(cachedBody, "\n")+`\n`)
}

// proxyEnv is what a proxy's configuration needs to know.
type proxyEnv struct {
	dir        string // this instance's own directory
	httpPort   int
	httpsPort  int
	originPort int
	cert       certFiles
	maxConns   int // connection limit that fits RLIMIT_NOFILE
	cache      bool
}

// proxyLaunch is how to start one configured proxy.
type proxyLaunch struct {
	argv   []string // without the taskset prefix
	env    []string
	config string // the configuration text, for the report
	// validate, if set, is run before starting (Gatehouse: `validate`).
	validate []string
}

func gatehouseConfig(bin string, e proxyEnv) (proxyLaunch, error) {
	cfg := fmt.Sprintf(`# Gatehouse under test. Requests are logged at info level, so --log-level warn
# (on the command line) turns the per-request log off, like access_log off.
global:
  data_dir: %[1]q
  http_port: %[2]d
  https_port: %[3]d
  listen: 127.0.0.1
  admin: "off"
  http3: true                 # scenario 7 measures HTTP/3 on UDP https_port
  shutdown_timeout: 2s        # the harness stops it with SIGTERM
  cache: {max_size: 64MiB}    # used only by sites with cache: true
upstreams:
  origin:
    # Keep-alive pool to the origin: 1024 idle connections per backend are
    # built in (upstream/pool.go), the same as nginx keepalive 1024 here.
    backends:
      - url: http://127.0.0.1:%[4]d
sites:
  - hosts: [127.0.0.1]
    tls: off
    cache: %[5]t
    routes:
      - {path: /, upstream: origin}
  - hosts: [localhost]
    tls: {cert: %[6]q, key: %[7]q}
    cache: %[5]t
    # The other proxies add no security headers: turn the stage off so that
    # every proxy does the same work (X-Forwarded-For/-Proto, X-Real-IP and
    # Via are added by default, like the others are configured to).
    headers: {security: false}
    routes:
      - {path: /, upstream: origin}
`, filepath.Join(e.dir, "data"), e.httpPort, e.httpsPort, e.originPort, e.cache, e.cert.cert, e.cert.key)
	path := filepath.Join(e.dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return proxyLaunch{}, err
	}
	return proxyLaunch{
		argv:     []string{bin, "run", "--config", path, "--log-level", "warn"},
		env:      []string{"GOMAXPROCS=1"},
		config:   cfg,
		validate: []string{bin, "validate", "--config", path},
	}, nil
}

func nginxConfig(bin string, e proxyEnv) (proxyLaunch, error) {
	cacheHTTP, cacheLoc := "", ""
	if e.cache {
		// No proxy_cache_valid: only responses the origin marks cacheable
		// (Cache-Control: public, max-age=3600 on /cached) are stored, as in
		// the RFC 9111 caches of Gatehouse and HAProxy.
		cacheHTTP = fmt.Sprintf(`
    proxy_cache_path %s/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;`, e.dir)
		cacheLoc = `
            proxy_cache bench;
            add_header X-Cache $upstream_cache_status;`
	}
	cfg := fmt.Sprintf(`# nginx under test.
daemon off;                      # stays our child; master + 1 worker
worker_processes 1;              # one CPU for the proxy under test
worker_rlimit_nofile %[6]d;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events {
    worker_connections %[7]d;    # high: never the limit
}
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000;   # client side (HTTP/1.1 and HTTP/2); default 1000
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    # session tickets are on by default, as in the other proxies
    client_body_temp_path %[1]s/tmp-body;
    proxy_temp_path %[1]s/tmp-proxy;
    fastcgi_temp_path %[1]s/tmp-fastcgi;
    uwsgi_temp_path %[1]s/tmp-uwsgi;
    scgi_temp_path %[1]s/tmp-scgi;%[8]s
    upstream origin {
        server 127.0.0.1:%[4]d;
        keepalive 1024;              # idle keep-alive connections to the origin
        keepalive_requests 100000;   # upstream side
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:%[2]d;
        listen 127.0.0.1:%[3]d ssl http2;
        server_name localhost 127.0.0.1;
        ssl_certificate %[5]s;
        ssl_certificate_key %[10]s;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;          # keep-alive to the origin...
            proxy_set_header Connection "";  # ...without "Connection: close"
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffer_size 64k;           # 1 MiB responses: 16 x 64k in memory,
            proxy_buffers 16 64k;            # never a temp file%[9]s
        }
    }
}
`, e.dir, e.httpPort, e.httpsPort, e.originPort, e.cert.cert, e.maxConns*2+100, e.maxConns, cacheHTTP, cacheLoc, e.cert.key)
	path := filepath.Join(e.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return proxyLaunch{}, err
	}
	return proxyLaunch{
		argv:     []string{bin, "-p", e.dir, "-c", path, "-e", filepath.Join(e.dir, "error.log")},
		config:   cfg,
		validate: []string{bin, "-t", "-q", "-p", e.dir, "-c", path, "-e", filepath.Join(e.dir, "error.log")},
	}, nil
}

func haproxyConfig(bin string, e proxyEnv) (proxyLaunch, error) {
	cacheSection, cacheRules := "", ""
	if e.cache {
		cacheSection = `
cache bench
    total-max-size 64           # MB
    max-object-size 1048576
    max-age 3600
`
		cacheRules = `
    http-request cache-use bench
    http-response cache-store bench`
	}
	cfg := fmt.Sprintf(`# HAProxy under test. No "log" line: nothing is logged.
global
    nbthread 1                  # one CPU for the proxy under test
    maxconn %[5]d               # as high as RLIMIT_NOFILE allows (two fds per proxied connection)
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option http-keep-alive      # keep-alive on both sides
    http-reuse always           # share idle origin connections between clients
    option forwardfor           # X-Forwarded-For
    maxconn %[5]d
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
%[6]s
frontend bench
    bind 127.0.0.1:%[1]d
    bind 127.0.0.1:%[2]d ssl crt %[4]s alpn h2,http/1.1
    http-request set-header X-Real-IP %%[src]
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    default_backend origin

backend origin%[7]s
    server origin 127.0.0.1:%[3]d
`, e.httpPort, e.httpsPort, e.originPort, e.cert.combined, e.maxConns, cacheSection, cacheRules)
	path := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return proxyLaunch{}, err
	}
	return proxyLaunch{
		argv:     []string{bin, "-db", "-f", path},
		config:   cfg,
		validate: []string{bin, "-c", "-q", "-f", path},
	}, nil
}

// caddyConfig writes a Caddyfile, adapts it to JSON with `caddy adapt` and
// sets admin.config.persist=false there (Caddy 2.6's Caddyfile has no
// persist_config option; it arrived in 2.7).
func caddyConfig(bin string, e proxyEnv, adapt func(argv []string) (string, error)) (proxyLaunch, error) {
	if e.cache {
		return proxyLaunch{}, errNA
	}
	proxy := fmt.Sprintf(`reverse_proxy 127.0.0.1:%d {
		# X-Forwarded-For/-Proto/-Host are set by default
		header_up X-Real-IP {remote_host}
		transport http {
			keepalive 60s
			keepalive_idle_conns 1024
			keepalive_idle_conns_per_host 1024 # default 32
		}
	}`, e.originPort)
	cfg := fmt.Sprintf(`# Caddy under test; no log directive: no access log.
{
	admin off
	auto_https off
	http_port %[1]d
	https_port %[2]d
	servers {
		protocols h1 h2 h3
	}
}

http://127.0.0.1:%[1]d {
	bind 127.0.0.1
	%[5]s
}

https://localhost:%[2]d {
	bind 127.0.0.1
	tls %[3]s %[4]s {
		protocols tls1.2 tls1.3
	}
	%[5]s
}
`, e.httpPort, e.httpsPort, e.cert.cert, e.cert.key, proxy)
	path := filepath.Join(e.dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return proxyLaunch{}, err
	}
	out, err := adapt([]string{bin, "adapt", "--config", path, "--adapter", "caddyfile"})
	if err != nil {
		return proxyLaunch{}, fmt.Errorf("caddy adapt: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return proxyLaunch{}, fmt.Errorf("caddy adapt output: %w", err)
	}
	admin, _ := doc["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{}
		doc["admin"] = admin
	}
	admin["disabled"] = true
	admin["config"] = map[string]any{"persist": false}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return proxyLaunch{}, err
	}
	jsPath := filepath.Join(e.dir, "caddy.json")
	if err := os.WriteFile(jsPath, js, 0o644); err != nil {
		return proxyLaunch{}, err
	}
	home := filepath.Join(e.dir, "home")
	return proxyLaunch{
		argv: []string{bin, "run", "--config", jsPath},
		env: []string{"GOMAXPROCS=1", "HOME=" + home,
			"XDG_DATA_HOME=" + filepath.Join(home, "data"), "XDG_CONFIG_HOME=" + filepath.Join(home, "config")},
		config:   cfg + "\n# adapted to JSON, then admin.config.persist = false\n",
		validate: []string{bin, "validate", "--config", jsPath},
	}, nil
}

// tuningNotes is the "How each proxy was tuned" section of the report.
const tuningNotes = `All four proxies get the same job: listen on 127.0.0.1 with one plain-HTTP
port and one HTTPS port (the same self-signed ECDSA P-256 certificate for
localhost and 127.0.0.1, TLS 1.2 and 1.3, HTTP/2 by ALPN), proxy every path to
one origin over HTTP/1.1 keep-alive with an idle pool of 1024
connections (more than the 64 client connections of the busiest HTTP/1.1
scenario), set X-Forwarded-For, X-Real-IP and X-Forwarded-Proto and log
nothing per request. Before measuring, the harness checks through every proxy,
over HTTP/1.1 and HTTPS + HTTP/2, that each path returns the origin's exact
body and that the forwarded headers arrived (host, XFF, X-Real-IP,
X-Forwarded-Proto). Each proxy runs alone on one CPU (see pinning).

- **Gatehouse**: ` + "`--log-level warn`" + ` (the per-request log lines are
  info), ` + "`GOMAXPROCS=1`" + `, ` + "`admin: off`" + `, ` + "`http3: true`" + `;
  one ` + "`tls: off`" + ` site for 127.0.0.1 and one ` + "`tls: {cert, key}`" + ` site for
  localhost, both routing ` + "`/`" + ` to the upstream ` + "`origin`" + `. Its origin pool keeps
  1024 idle connections (built in). The security-headers stage is turned off
  (` + "`headers: {security: false}`" + `) because no other proxy adds those headers.
  Cache variant: ` + "`cache: true`" + ` on both sites, ` + "`global.cache.max_size: 64MiB`" + `.
- **nginx**: ` + "`worker_processes 1`" + ` (master + one worker, ` + "`daemon off`" + `),
  ` + "`access_log off`" + `, ` + "`sendfile`/`tcp_nopush`/`tcp_nodelay on`" + `,
  ` + "`keepalive_requests 100000`" + ` on the client side and in the upstream,
  ` + "`upstream { keepalive 1024; }`" + ` with ` + "`proxy_http_version 1.1`" + ` and
  ` + "`proxy_set_header Connection \"\"`" + `, ` + "`proxy_buffer_size 64k`" + ` and
  ` + "`proxy_buffers 16 64k`" + ` (a 1 MiB response fits in memory, no temp file),
  ` + "`listen ... ssl http2`" + `, default session tickets. Cache variant:
  ` + "`proxy_cache_path`" + ` in the temp dir (64 MB, ` + "`keys_zone`" + ` 10 MB) and
  ` + "`proxy_cache`" + `, without ` + "`proxy_cache_valid`" + ` so only responses the
  origin marks cacheable are stored, like the RFC 9111 caches.
- **HAProxy**: ` + "`nbthread 1`" + `, ` + "`maxconn`" + ` as high as the open-files
  limit allows, ` + "`option http-keep-alive`" + `, ` + "`http-reuse always`" + ` (idle
  server connections shared between clients, pool unbounded by default),
  ` + "`option forwardfor`" + ` plus ` + "`http-request set-header`" + ` for X-Real-IP and
  X-Forwarded-Proto, ` + "`bind ... ssl crt ... alpn h2,http/1.1`" + `, no ` + "`log`" + ` line.
  Cache variant: a ` + "`cache`" + ` section (64 MB, objects up to 1 MiB, max-age
  3600) with ` + "`http-request cache-use`" + ` / ` + "`http-response cache-store`" + `.
- **Caddy**: Caddyfile adapted to JSON: ` + "`admin off`" + `, ` + "`auto_https off`" + `,
  ` + "`admin.config.persist: false`" + ` (set in the JSON: Caddy 2.6's Caddyfile has no
  ` + "`persist_config`" + `), ` + "`GOMAXPROCS=1`" + `, HOME/XDG dirs in the temp dir, no
  ` + "`log`" + ` directive (no access log), HTTP/1.1, 2 and 3 (the default),
  ` + "`reverse_proxy`" + ` with ` + "`transport http { keepalive 60s; keepalive_idle_conns 1024;\n  keepalive_idle_conns_per_host 1024 }`" + ` (the per-host default is 32) and
  ` + "`header_up X-Real-IP {remote_host}`" + ` (X-Forwarded-* are set by default).
  Cache: n/a (Debian's Caddy 2.6 has no cache module).
- **Origin**: a separate nginx, one process (` + "`master_process off`" + `), on the load
  CPU, ` + "`access_log off`" + ` (except a counter on /cached),
  ` + "`keepalive_requests`" + ` unlimited so it never closes a proxy's connection.
  /small and /cached are ` + "`return 200`" + ` with fixed 100-byte bodies, /1m a 1 MiB
  file sent with sendfile.`
