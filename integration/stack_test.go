package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run requests through the whole stack of the real binary
// (request id, access log, router, forwarder) and check what survives the
// trip in both directions.

// stackSite routes every path of stack.test to the upstream named api,
// whose backends are the given URLs.
func stackSite(urls ...string) string {
	var b strings.Builder
	b.WriteString("upstreams:\n  api:\n    backends:\n")
	for _, u := range urls {
		fmt.Fprintf(&b, "      - url: %s\n", u)
	}
	b.WriteString(`sites:
  - hosts: [stack.test]
    tls: off
    routes:
      - path: /
        upstream: api
`)
	return b.String()
}

// bodyDigest is what hashHandler answers.
type bodyDigest struct {
	Backend string
	Method  string
	Len     int64
	SHA256  string
	Expect  string // the Expect header the backend received
}

// hashHandler answers every request with the length and SHA-256 of the body
// it received.
func hashHandler(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(bodyDigest{
			Backend: name, Method: r.Method, Len: n,
			SHA256: hex.EncodeToString(h.Sum(nil)), Expect: r.Header.Get("Expect"),
		})
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// randomBody returns n reproducible pseudo-random bytes for seed.
func randomBody(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// informational is one 1xx response a client saw.
type informational struct {
	code   int
	header http.Header
}

// tracedResponse is a fully read response plus the 1xx responses before it.
type tracedResponse struct {
	Response
	informational []informational
	got100        bool
}

// doTraced sends req with a client trace recording 1xx responses and reads
// the whole response; the request gets a 30s deadline (a hang guard).
func doTraced(t testing.TB, c *http.Client, req *http.Request) tracedResponse {
	t.Helper()
	var (
		mu  sync.Mutex
		out tracedResponse
	)
	trace := &httptrace.ClientTrace{
		Got100Continue: func() {
			mu.Lock()
			out.got100 = true
			mu.Unlock()
		},
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			mu.Lock()
			out.informational = append(out.informational, informational{code, http.Header(h).Clone()})
			mu.Unlock()
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(req.Context(), 30*time.Second)
	defer cancel()
	req = req.WithContext(httptrace.WithClientTrace(ctx, trace))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s (Host %s): reading body: %v", req.Method, req.URL, req.Host, err)
	}
	mu.Lock()
	defer mu.Unlock()
	out.Response = Response{Status: resp.StatusCode, Header: resp.Header, Trailer: resp.Trailer, Body: string(b)}
	return out
}

// newRequest builds a request to the gateway for host stack.test.
func newStackRequest(t testing.TB, g *Gateway, method, path string, body []byte) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, g.BaseURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "stack.test"
	return req
}

// wantOneRequestID checks that h carries exactly one well-formed
// X-Request-Id and returns it.
func wantOneRequestID(t testing.TB, h http.Header) string {
	t.Helper()
	ids := h.Values("X-Request-Id")
	if len(ids) != 1 {
		t.Errorf("response X-Request-Id = %q, want exactly one", ids)
		return ""
	}
	if !requestIDPattern.MatchString(ids[0]) {
		t.Errorf("response X-Request-Id = %q, want a well-formed id", ids[0])
	}
	return ids[0]
}

// TestStackExpectContinue sends a 1 MiB POST with "Expect: 100-continue":
// the client gets its 100 Continue, the body reaches the backend intact, and
// the final response carries exactly one X-Request-Id.
func TestStackExpectContinue(t *testing.T) {
	t.Parallel()
	be := newBackend(t, hashHandler("hash"))
	g := startGateway(t, GatewayConfig{Body: stackSite(be.URL)})

	c := newClient()
	tr := c.Transport.(*http.Transport)
	// Only how long the client waits for the 100 before sending the body
	// anyway: the assertions below hold either way.
	tr.ExpectContinueTimeout = 5 * time.Second
	t.Cleanup(c.CloseIdleConnections)

	body := randomBody(1, 1<<20)
	req := newStackRequest(t, g, http.MethodPost, "/upload", body)
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Content-Type", "application/octet-stream")
	r := doTraced(t, c, req)
	if r.Status != http.StatusOK {
		t.Fatalf("POST /upload = %d %q, want 200", r.Status, r.Body)
	}
	var d bodyDigest
	if err := json.Unmarshal([]byte(r.Body), &d); err != nil {
		t.Fatalf("response is not the backend's digest: %v (body %q)", err, r.Body)
	}
	if d.Method != http.MethodPost || d.Len != int64(len(body)) || d.SHA256 != sha256Hex(body) {
		t.Errorf("backend received %s with %d bytes sha256 %s, want POST with %d bytes sha256 %s",
			d.Method, d.Len, d.SHA256, len(body), sha256Hex(body))
	}
	if !r.got100 {
		t.Errorf("client never received 100 Continue")
	}
	wantOneRequestID(t, r.Header)
}

// TestStackEarlyHints has the backend send 103 Early Hints carrying Link, a
// Connection-listed header, that header, and Alt-Svc, then 200: the client
// sees the 103 with Link only (hop-by-hop headers and the backend's Alt-Svc
// stripped), and a final 200 with exactly one X-Request-Id and no Alt-Svc.
func TestStackEarlyHints(t *testing.T) {
	t.Parallel()
	const link = "</style.css>; rel=preload"
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Link", link)
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "secret")
		h.Set("Alt-Svc", `h3=":9999"`)
		w.WriteHeader(http.StatusEarlyHints)
		// net/http keeps the 1xx headers in the map: the final response
		// starts from a clean slate.
		clear(h)
		h.Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "hinted")
	})
	g := startGateway(t, GatewayConfig{Body: stackSite(be.URL)})

	check103 := func(t *testing.T, r tracedResponse, wantStripped bool) {
		t.Helper()
		if len(r.informational) != 1 || r.informational[0].code != http.StatusEarlyHints {
			codes := []int{}
			for _, i := range r.informational {
				codes = append(codes, i.code)
			}
			t.Fatalf("1xx responses seen = %v, want exactly one 103", codes)
		}
		h := r.informational[0].header
		if got := h.Values("Link"); !slices.Equal(got, []string{link}) {
			t.Errorf("103 Link = %q, want [%s]", got, link)
		}
		for _, name := range []string{"X-Hop", "Alt-Svc", "Connection"} {
			if v, ok := h[name]; ok == wantStripped {
				if wantStripped {
					t.Errorf("103 carries %s: %q", name, v)
				} else {
					t.Fatalf("test backend's 103 lacks %s even without the gateway (headers %v)", name, h)
				}
			}
		}
	}

	// Control: the backend really sends what the gateway must strip.
	direct, err := http.NewRequest(http.MethodGet, be.URL+"/hints", nil)
	if err != nil {
		t.Fatal(err)
	}
	dc := newClient()
	t.Cleanup(dc.CloseIdleConnections)
	check103(t, doTraced(t, dc, direct), false)

	r := doTraced(t, g.Client, newStackRequest(t, g, http.MethodGet, "/hints", nil))
	if r.Status != http.StatusOK || r.Body != "hinted" {
		t.Fatalf("GET /hints = %d %q, want 200 \"hinted\"", r.Status, r.Body)
	}
	check103(t, r, true)
	wantOneRequestID(t, r.Header)
	if v, ok := r.Header["Alt-Svc"]; ok {
		t.Errorf("final response carries Alt-Svc %q", v)
	}
	for _, name := range []string{"X-Hop", "Link"} {
		if v, ok := r.Header[name]; ok {
			t.Errorf("final response carries the 103's %s: %q", name, v)
		}
	}
}

// TestStackRequestIDEcho uses a backend that echoes the X-Request-Id it
// received in its response: the client sees the id exactly once, and it is
// the id the backend saw (the client's own when well-formed).
func TestStackRequestIDEcho(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Request-Id"] = r.Header.Values("X-Request-Id")
		w.Header().Set("X-Seen-Request-Id", strings.Join(r.Header.Values("X-Request-Id"), "|"))
		io.WriteString(w, "ok")
	})
	g := startGateway(t, GatewayConfig{Body: stackSite(be.URL)})

	cases := []struct {
		name, sent, want string // want "": a fresh id
	}{
		{"generated", "", ""},
		{"client-id", "client-id.42_x", "client-id.42_x"},
		{"malformed", "not a valid id!", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req := newStackRequest(t, g, http.MethodGet, "/echo-id", nil)
			if c.sent != "" {
				req.Header.Set("X-Request-Id", c.sent)
			}
			r := doTraced(t, g.Client, req)
			if r.Status != http.StatusOK || r.Body != "ok" {
				t.Fatalf("GET /echo-id = %d %q, want 200 \"ok\"", r.Status, r.Body)
			}
			id := wantOneRequestID(t, r.Header)
			seen := r.Header.Get("X-Seen-Request-Id")
			if id != "" && id != seen {
				t.Errorf("response X-Request-Id = %q, backend saw %q", id, seen)
			}
			if c.want != "" && id != "" && id != c.want {
				t.Errorf("response X-Request-Id = %q, want the client's %q", id, c.want)
			}
			if c.want == "" && c.sent != "" && id == c.sent {
				t.Errorf("response X-Request-Id is the client's malformed %q", id)
			}
		})
	}
}

// TestStackFailoverPOST puts a backend that refuses connections in front of
// a live one: POSTs with distinct 64 KiB bodies all reach the live backend
// intact, whichever backend each one was tried on first.
func TestStackFailoverPOST(t *testing.T) {
	t.Parallel()
	dead := deadAddr(t)
	be := newBackend(t, hashHandler("live"))
	g := startGateway(t, GatewayConfig{Body: stackSite("http://"+dead, be.URL)})

	for i := range 5 {
		body := randomBody(uint64(100+i), 64<<10)
		r := doTraced(t, g.Client, newStackRequest(t, g, http.MethodPost, fmt.Sprintf("/failover/%d", i), body))
		if r.Status != http.StatusOK {
			t.Errorf("POST %d with the first backend refusing = %d %q, want 200 from the second", i, r.Status, r.Body)
			continue
		}
		var d bodyDigest
		if err := json.Unmarshal([]byte(r.Body), &d); err != nil {
			t.Errorf("POST %d: response is not the backend's digest: %v (body %q)", i, err, r.Body)
			continue
		}
		if d.Backend != "live" || d.Method != http.MethodPost || d.Len != int64(len(body)) || d.SHA256 != sha256Hex(body) {
			t.Errorf("POST %d: backend %q received %s with %d bytes sha256 %s, want POST with %d bytes sha256 %s",
				i, d.Backend, d.Method, d.Len, d.SHA256, len(body), sha256Hex(body))
		}
	}
}

// TestStackResponseVia checks that responses name the gateway in Via, after
// any Via entry the backend sent.
func TestStackResponseVia(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/with-via" {
			w.Header().Set("Via", "1.1 origin-cache")
		}
		io.WriteString(w, "via")
	})
	g := startGateway(t, GatewayConfig{Body: stackSite(be.URL)})

	t.Run("plain", func(t *testing.T) {
		t.Parallel()
		r := g.Get(t, "stack.test", "/plain")
		if r.Status != http.StatusOK || r.Body != "via" {
			t.Fatalf("GET /plain = %d %q, want 200 \"via\"", r.Status, r.Body)
		}
		via := strings.Join(r.Header.Values("Via"), ", ")
		if !strings.Contains(strings.ToLower(via), "gatehouse") {
			t.Errorf("response Via = %q, want it to name gatehouse", via)
		}
	})
	t.Run("backend-via", func(t *testing.T) {
		t.Parallel()
		r := g.Get(t, "stack.test", "/with-via")
		if r.Status != http.StatusOK || r.Body != "via" {
			t.Fatalf("GET /with-via = %d %q, want 200 \"via\"", r.Status, r.Body)
		}
		via := strings.Join(r.Header.Values("Via"), ", ")
		origin := strings.Index(via, "origin-cache")
		ours := strings.LastIndex(strings.ToLower(via), "gatehouse")
		if origin < 0 || ours < 0 || ours < origin {
			t.Errorf("response Via = %q, want the backend's \"1.1 origin-cache\" followed by gatehouse", via)
		}
	})
}
