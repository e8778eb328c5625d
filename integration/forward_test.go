package integration

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// forwardSite routes every path of fwd.test to the api upstream.
const forwardSite = `
upstreams:
  api:
    backends:
      - url: %s
sites:
  - hosts: [fwd.test]
    tls: off
    routes:
      - path: /
        upstream: api
`

// TestForwardRequestHeaders checks what the backend receives: hop-by-hop
// headers removed, X-Forwarded-*, X-Real-IP and Via set, Host kept.
func TestForwardRequestHeaders(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("echo"))
	body := fmt.Sprintf(forwardSite, be.URL)
	untrusted := startGateway(t, GatewayConfig{Body: body, Global: "trusted_proxies: [10.0.0.0/8]"})
	trusted := startGateway(t, GatewayConfig{Body: body, Global: "trusted_proxies: [127.0.0.1]"})

	// hop lists headers that are hop-by-hop on the client's connection.
	const hop = "Connection: keep-alive, X-Secret-Hop\r\n" +
		"X-Secret-Hop: 1\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"TE: trailers, deflate\r\n" +
		"Upgrade: example/1\r\n" +
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
		"X-Keep-Me: yes\r\n"
	// Control: sent straight to the backend, every hop header arrives, so
	// their absence below is the gateway's doing.
	direct := decodeEcho(t, rawRequest(t, be.Listener.Addr().String(), "GET / HTTP/1.1\r\nHost: fwd.test\r\n"+hop+"\r\n"))
	for _, name := range []string{"Connection", "X-Secret-Hop", "Keep-Alive", "Proxy-Connection", "Te", "Upgrade", "Proxy-Authorization"} {
		if _, ok := direct.Header[name]; !ok {
			t.Fatalf("test backend does not see %s even without the gateway (headers %v)", name, direct.Header)
		}
	}

	cases := []struct {
		name       string
		gw         *Gateway
		extra      string
		wantXFF    string
		wantRealIP string
	}{
		{"untrusted/no-xff", untrusted, "", "127.0.0.1", "127.0.0.1"},
		{"untrusted/spoofed", untrusted,
			"X-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n",
			"127.0.0.1", "127.0.0.1"},
		{"trusted/chain", trusted, "X-Forwarded-For: 1.2.3.4\r\n", "1.2.3.4, 127.0.0.1", "1.2.3.4"},
		{"trusted/no-xff", trusted, "", "127.0.0.1", "127.0.0.1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req := "GET /hdr?a=b HTTP/1.1\r\nHost: fwd.test\r\n" + hop + c.extra + "\r\n"
			e := decodeEcho(t, rawRequest(t, c.gw.Addr, req))
			h := e.Header

			for _, name := range []string{"X-Secret-Hop", "Keep-Alive", "Proxy-Connection", "Upgrade", "Proxy-Authorization"} {
				if v, ok := h[name]; ok {
					t.Errorf("backend received hop-by-hop header %s: %q", name, v)
				}
			}
			if conn := h.Values("Connection"); len(conn) > 0 && !(len(conn) == 1 && strings.EqualFold(conn[0], "close")) {
				t.Errorf("backend received the client's Connection header %q", conn)
			}
			if te := h.Values("Te"); len(te) > 0 && !(len(te) == 1 && strings.EqualFold(te[0], "trailers")) {
				t.Errorf("backend received TE %q, want none or exactly \"trailers\"", te)
			}
			if got := h.Get("X-Keep-Me"); got != "yes" {
				t.Errorf("end-to-end header X-Keep-Me = %q, want yes", got)
			}
			if got := strings.Join(h.Values("X-Forwarded-For"), ", "); got != c.wantXFF {
				t.Errorf("X-Forwarded-For = %q, want %q", got, c.wantXFF)
			}
			if got := h.Values("X-Real-Ip"); len(got) != 1 || got[0] != c.wantRealIP {
				t.Errorf("X-Real-IP = %q, want [%s]", got, c.wantRealIP)
			}
			if got := h.Values("X-Forwarded-Proto"); len(got) != 1 || got[0] != "http" {
				t.Errorf("X-Forwarded-Proto = %q, want [http]", got)
			}
			if got := h.Values("X-Forwarded-Host"); len(got) != 1 || got[0] != "fwd.test" {
				t.Errorf("X-Forwarded-Host = %q, want [fwd.test]", got)
			}
			if via := strings.Join(h.Values("Via"), ", "); !strings.Contains(strings.ToLower(via), "gatehouse") {
				t.Errorf("Via = %q, want it to name gatehouse", via)
			}
			if e.Host != "fwd.test" {
				t.Errorf("backend Host = %q, want the client's fwd.test", e.Host)
			}
			if e.RequestURI != "/hdr?a=b" {
				t.Errorf("backend request URI = %q, want /hdr?a=b", e.RequestURI)
			}
		})
	}
}

// TestForwardResponse checks what the client receives from a backend:
// hop-by-hop headers and Alt-Svc removed, others kept, trailers delivered.
func TestForwardResponse(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/resp-hop", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Backend-Hop")
		w.Header().Set("X-Backend-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=5, max=100")
		w.Header().Set("Alt-Svc", `h3=":9999"; ma=60`)
		w.Header().Set("X-Backend", "yes")
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hop body"))
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum, X-Count")
		w.Header().Set("Content-Type", "text/plain")
		rc := http.NewResponseController(w)
		for i := range 3 {
			fmt.Fprintf(w, "chunk %d\n", i)
			rc.Flush()
		}
		w.Header().Set("X-Checksum", "abc123")
		w.Header().Set("X-Count", "3")
		w.Header().Set(http.TrailerPrefix+"X-Late", "undeclared")
	})
	be := newBackend(t, mux.ServeHTTP)
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(forwardSite, be.URL)})

	t.Run("hop-by-hop", func(t *testing.T) {
		t.Parallel()
		// Control: the backend really sends what the gateway must strip.
		direct := doRequest(t, newClient(), "", "GET", be.URL+"/resp-hop", nil, nil)
		for _, name := range []string{"X-Backend-Hop", "Keep-Alive", "Alt-Svc"} {
			if direct.Header.Get(name) == "" {
				t.Fatalf("test backend did not send %s (headers %v)", name, direct.Header)
			}
		}
		r := g.Get(t, "fwd.test", "/resp-hop")
		if r.Status != 200 || r.Body != "hop body" {
			t.Fatalf("GET /resp-hop = %d %q, want 200 \"hop body\"", r.Status, r.Body)
		}
		for _, name := range []string{"X-Backend-Hop", "Keep-Alive"} {
			if v, ok := r.Header[name]; ok {
				t.Errorf("client received the backend's hop-by-hop header %s: %q", name, v)
			}
		}
		if c := r.Header.Get("Connection"); strings.Contains(strings.ToLower(c), "x-backend-hop") {
			t.Errorf("client received the backend's Connection header %q", c)
		}
		for _, v := range r.Header.Values("Alt-Svc") {
			if strings.Contains(v, "9999") {
				t.Errorf("client received the backend's Alt-Svc %q", v)
			}
		}
		if got := r.Header.Get("X-Backend"); got != "yes" {
			t.Errorf("X-Backend = %q, want yes", got)
		}
	})

	t.Run("trailers", func(t *testing.T) {
		t.Parallel()
		r := g.Get(t, "fwd.test", "/trailers")
		if r.Status != 200 || r.Body != "chunk 0\nchunk 1\nchunk 2\n" {
			t.Fatalf("GET /trailers = %d %q", r.Status, r.Body)
		}
		want := map[string]string{"X-Checksum": "abc123", "X-Count": "3", "X-Late": "undeclared"}
		for k, v := range want {
			if got := r.Trailer.Get(k); got != v {
				t.Errorf("trailer %s = %q, want %q (trailers %v)", k, got, v, r.Trailer)
			}
		}
	})
}

// TestForwardErrors covers a dead backend (502), a stalled backend (504)
// and failover to a second backend.
func TestForwardErrors(t *testing.T) {
	t.Parallel()
	dead := deadAddr(t)
	stallDone := make(chan struct{})
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stallDone:
		case <-time.After(5 * time.Second):
		}
		w.Write([]byte("too late"))
	})
	t.Cleanup(func() { close(stallDone) }) // runs before slow.Close
	live := newBackend(t, echoHandler("live"))
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
upstreams:
  dead:
    backends:
      - url: http://%[1]s
    timeouts: {dial: 1s, response_header: 2s}
  slow:
    backends:
      - url: %[2]s
    timeouts: {dial: 1s, response_header: 300ms}
  pair:
    backends:
      - url: http://%[1]s
      - url: %[3]s
    timeouts: {dial: 1s, response_header: 2s}
sites:
  - hosts: [err.test]
    tls: off
    routes:
      - path: /dead
        upstream: dead
      - path: /dead-inline
        upstream: [http://%[1]s]
      - path: /slow
        upstream: slow
      - path: /failover
        upstream: pair
`, dead, slow.URL, live.URL)})
	_, deadPort, _ := strings.Cut(dead, ":")
	_, slowPort, _ := strings.Cut(slow.Listener.Addr().String(), ":")

	for _, path := range []string{"/dead", "/dead-inline"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			r := g.Get(t, "err.test", path)
			assertErrorBody(t, r, http.StatusBadGateway, dead, deadPort, "127.0.0.1")
		})
	}

	t.Run("/slow", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		r := g.Get(t, "err.test", "/slow")
		elapsed := time.Since(start)
		assertErrorBody(t, r, http.StatusGatewayTimeout, slowPort, "127.0.0.1", "too late")
		if elapsed > 3*time.Second {
			t.Errorf("504 came after %v; response_header is 300ms", elapsed)
		}
	})

	t.Run("/failover", func(t *testing.T) {
		t.Parallel()
		for i := range 6 {
			r := g.Get(t, "err.test", "/failover/"+strconv.Itoa(i))
			if r.Status != 200 {
				t.Errorf("request %d with the first backend refusing = %d %q, want 200 from the second", i, r.Status, r.Body)
				continue
			}
			if e := decodeEcho(t, r); e.Backend != "live" {
				t.Errorf("request %d served by %q", i, e.Backend)
			}
		}
	})
}

// TestAccessLog checks the JSON request log line and that every stderr
// line is a JSON object.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	be := newBackend(t, echoHandler("echo"))
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(forwardSite, be.URL)})
	decodeEcho(t, g.Get(t, "fwd.test", "/log-check/x?q=1"))

	line := g.WaitLog(5*time.Second, `"msg":"request" for /log-check/x`, func(m map[string]any) bool {
		p, _ := m["path"].(string)
		return m["msg"] == "request" && strings.HasPrefix(p, "/log-check/x")
	})
	for _, k := range []string{"client_ip", "method", "host", "path", "status", "bytes", "duration_ms", "route", "upstream", "request_id", "proto"} {
		if _, ok := line[k]; !ok {
			t.Errorf("request log line has no %q: %v", k, line)
		}
	}
	wantStr := map[string]string{"client_ip": "127.0.0.1", "method": "GET", "host": "fwd.test", "proto": "HTTP/1.1"}
	for k, v := range wantStr {
		if got, _ := line[k].(string); got != v {
			t.Errorf("log %s = %v, want %q", k, line[k], v)
		}
	}
	if s, ok := line["status"].(float64); !ok || s != 200 {
		t.Errorf("log status = %#v, want the number 200", line["status"])
	}
	if b, ok := line["bytes"].(float64); !ok || b <= 0 {
		t.Errorf("log bytes = %#v, want a positive number", line["bytes"])
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("log duration_ms = %#v, want a non-negative number", line["duration_ms"])
	}
	if id, _ := line["request_id"].(string); id == "" {
		t.Errorf("log request_id = %#v, want a non-empty string", line["request_id"])
	}
	if u, _ := line["upstream"].(string); u == "" {
		t.Errorf("log upstream = %#v, want the upstream of a proxied request", line["upstream"])
	}

	objs, bad := g.LogLines()
	for _, l := range bad {
		t.Errorf("stderr line is not JSON: %q", l)
	}
	for _, o := range objs {
		if _, ok := o["msg"].(string); !ok {
			t.Errorf("log line without msg: %v", o)
		}
	}
}
