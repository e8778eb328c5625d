package integration

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
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

// proxyHeaders are the request headers the gateway sets itself; whatever a
// client sends under these names is replaced (or, from a trusted peer,
// extended).
var proxyHeaders = []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "Via", "X-Request-Id"}

// requestHopHeaders returns the canonical names in h that are hop-by-hop on
// the client's connection: the fixed list plus every name Connection lists.
func requestHopHeaders(h http.Header) map[string]bool {
	hop := map[string]bool{}
	for _, k := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		hop[k] = true
	}
	for _, line := range h.Values("Connection") {
		for _, tok := range strings.Split(line, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				hop[http.CanonicalHeaderKey(tok)] = true
			}
		}
	}
	return hop
}

// headerListHas reports whether a comma-separated header list holds token.
func headerListHas(values []string, token string) bool {
	for _, v := range values {
		for _, tok := range strings.Split(v, ",") {
			tok, _, _ = strings.Cut(tok, ";")
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// TestForwardRequestHeaders checks the exact header set the backend
// receives: what the client sent (as a backend sees it without the gateway)
// minus the hop-by-hop headers, plus "TE: trailers" when the client accepts
// trailers, plus X-Forwarded-For/-Proto/-Host, X-Real-IP, Via and
// X-Request-Id with the right values. Any other header fails the test. Host
// and the request target are kept.
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
		"X-Keep-Me: yes\r\n" +
		"Accept: */*\r\n" +
		"User-Agent: gatehouse-integration\r\n"

	cases := []struct {
		name       string
		gw         *Gateway
		extra      string
		wantXFF    string
		wantRealIP string
		wantProto  string
		wantFwHost string
		wantReqID  string // "" means a fresh id the gateway made
	}{
		{"untrusted/no-xff", untrusted, "", "127.0.0.1", "127.0.0.1", "http", "fwd.test", ""},
		{"untrusted/spoofed", untrusted,
			"X-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n",
			"127.0.0.1", "127.0.0.1", "http", "fwd.test", ""},
		{"untrusted/request-id", untrusted, "X-Request-Id: client.id_42-A\r\n",
			"127.0.0.1", "127.0.0.1", "http", "fwd.test", "client.id_42-A"},
		{"untrusted/bad-request-id", untrusted, "X-Request-Id: not a valid id!\r\n",
			"127.0.0.1", "127.0.0.1", "http", "fwd.test", ""},
		{"trusted/chain", trusted, "X-Forwarded-For: 1.2.3.4\r\n", "1.2.3.4, 127.0.0.1", "1.2.3.4", "http", "fwd.test", ""},
		{"trusted/no-xff", trusted, "", "127.0.0.1", "127.0.0.1", "http", "fwd.test", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req := "GET /hdr?a=b HTTP/1.1\r\nHost: fwd.test\r\n" + hop + c.extra + "\r\n"

			// Control: the same request straight to the backend shows what a
			// backend sees of the client's headers (including anything the
			// client or the backend's server adds); every hop header arrives,
			// so their absence below is the gateway's doing.
			direct := decodeEcho(t, rawRequest(t, be.Listener.Addr().String(), req)).Header
			for _, name := range []string{"Connection", "X-Secret-Hop", "Keep-Alive", "Proxy-Connection", "Te", "Upgrade", "Proxy-Authorization"} {
				if _, ok := direct[name]; !ok {
					t.Fatalf("test backend does not see %s even without the gateway (headers %v)", name, direct)
				}
			}

			resp := rawRequest(t, c.gw.Addr, req)
			e := decodeEcho(t, resp)
			h := e.Header

			// The expected header set, by canonical name.
			hopNames := requestHopHeaders(direct)
			isProxy := map[string]bool{}
			for _, k := range proxyHeaders {
				isProxy[k] = true
			}
			want := map[string]bool{}
			for k := range direct {
				if !hopNames[k] && !isProxy[k] {
					want[k] = true
				}
			}
			for _, k := range proxyHeaders {
				want[k] = true
			}
			trailers := headerListHas(direct.Values("Te"), "trailers")
			if trailers {
				want["Te"] = true
			}

			for k, v := range h {
				if !want[k] {
					t.Errorf("backend received unexpected header %s: %q", k, v)
				}
			}
			for k := range want {
				if _, ok := h[k]; !ok {
					t.Errorf("backend did not receive %s (direct: %q)", k, direct.Values(k))
				}
			}

			// End-to-end headers arrive unchanged.
			for k := range want {
				if isProxy[k] || k == "Te" {
					continue
				}
				if got, sent := h[k], direct[k]; !slices.Equal(got, sent) {
					t.Errorf("end-to-end header %s = %q, want the client's %q", k, got, sent)
				}
			}
			if trailers {
				if got := h.Values("Te"); !slices.Equal(got, []string{"trailers"}) {
					t.Errorf("TE = %q, want exactly [trailers]", got)
				}
			}

			// The gateway's own headers.
			wantOne := func(name, want string) {
				t.Helper()
				if got := h.Values(name); len(got) != 1 || got[0] != want {
					t.Errorf("%s = %q, want [%s]", name, got, want)
				}
			}
			wantOne("X-Forwarded-For", c.wantXFF)
			wantOne("X-Real-Ip", c.wantRealIP)
			wantOne("X-Forwarded-Proto", c.wantProto)
			wantOne("X-Forwarded-Host", c.wantFwHost)
			if via := h.Values("Via"); len(via) != 1 || !strings.HasPrefix(via[0], "1.1 ") ||
				!strings.Contains(strings.ToLower(via[0]), "gatehouse") || strings.Contains(via[0], ",") {
				t.Errorf("Via = %q, want one entry \"1.1 gatehouse…\"", via)
			}
			ids := h.Values("X-Request-Id")
			switch {
			case len(ids) != 1 || !requestIDPattern.MatchString(ids[0]):
				t.Errorf("backend X-Request-Id = %q, want exactly one well-formed id", ids)
			case c.wantReqID != "" && ids[0] != c.wantReqID:
				t.Errorf("backend X-Request-Id = %q, want the client's %q", ids[0], c.wantReqID)
			case c.wantReqID == "" && slices.Contains(direct.Values("X-Request-Id"), ids[0]):
				t.Errorf("backend X-Request-Id = %q is the client's malformed id, want a fresh one", ids[0])
			}
			if got := resp.Header.Values("X-Request-Id"); len(ids) == 1 && !slices.Equal(got, ids) {
				t.Errorf("response X-Request-Id = %q, want exactly the backend's %q", got, ids)
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
		// Stalls until the gateway gives up (or the test ends): the 504
		// cannot lose a race against this backend's answer.
		select {
		case <-r.Context().Done():
		case <-stallDone:
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
		// A hang guard, not a latency assertion: response_header is 300ms.
		if elapsed := time.Since(start); elapsed > 20*time.Second {
			t.Errorf("504 came after %v (hang guard 20s)", elapsed)
		}
		assertErrorBody(t, r, http.StatusGatewayTimeout, slowPort, "127.0.0.1", "too late")
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

	line := g.WaitLog(20*time.Second, `"msg":"request" for /log-check/x`, func(m map[string]any) bool {
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
