package upstream

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestQueryCleaning checks that the query reaches the backend as
// ReverseProxy cleans it (CVE-2022-2880): well-formed queries byte-identical,
// queries with a semicolon or a bad escape re-encoded without those pieces.
func TestQueryCleaning(t *testing.T) {
	t.Parallel()
	front := serveProxy(t, NewProxy(newTestPool(t, nil, echoBackend(t).URL), quietOptions()))
	tests := []struct {
		name, target, wantURI string
	}{
		{"escaped space", "/q?a=1&b=%20x", "/q?a=1&b=%20x"},
		{"order, repeats, plus and odd escapes kept", "/q?b=2&a=1&a=%41+%2b&c=&d", "/q?b=2&a=1&a=%41+%2b&c=&d"},
		{"empty query kept", "/q?", "/q?"},
		{"no query", "/q", "/q"},
		{"semicolon piece dropped", "/q?a=1;b=2", "/q"},
		{"semicolon piece dropped, others kept", "/q?a=1&b=2;c=3", "/q?a=1"},
		{"bad escape dropped", "/q?b=%zz&a=1", "/q?a=1"},
		{"truncated escape dropped", "/q?a=1&b=%4", "/q?a=1"},
		{"mixed", "/q?x=1&y=%zz;z&x=%41", "/q?x=1&x=A"},
		{"re-encoded in key order", "/q?z=1&a=%41;&m=%20", "/q?m=+&z=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, err := front.Client().Get(front.URL + tc.target)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if got := decodeSeen(t, res.Body); got.URI != tc.wantURI {
				t.Errorf("backend got %q, want %q", got.URI, tc.wantURI)
			}
		})
	}
}

// TestResponseVia checks that the proxy appends its Via entry, with the
// version of the backend's response, to any Via the backend sent.
func TestResponseVia(t *testing.T) {
	t.Parallel()
	viaHandler := func(vias ...string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			for _, v := range vias {
				w.Header().Add("Via", v)
			}
			io.WriteString(w, "ok")
		}
	}
	// rawBackend answers with a hand-written response.
	rawBackend := func(resp string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString(resp)
			brw.Flush()
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
		h2c     bool
		want    string
	}{
		{"HTTP/1.1 backend", viaHandler(), false, "1.1 gatehouse"},
		{"backend Via kept", viaHandler("1.0 fred", "1.1 p.example.net"), false, "1.0 fred, 1.1 p.example.net, 1.1 gatehouse"},
		{"HTTP/2 backend", viaHandler("2.0 inner"), true, "2.0 inner, 2.0 gatehouse"},
		{"HTTP/1.0 backend", rawBackend("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"), false, "1.0 gatehouse"},
		{"HTTP/1.0 backend with Via", rawBackend("HTTP/1.0 200 OK\r\nVia: 1.0 fred\r\nContent-Length: 2\r\n\r\nok"), false, "1.0 fred, 1.0 gatehouse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend := httptest.NewUnstartedServer(tc.handler)
			if tc.h2c {
				backend.Config.Protocols = new(http.Protocols)
				backend.Config.Protocols.SetHTTP1(true)
				backend.Config.Protocols.SetUnencryptedHTTP2(true)
			}
			backend.Start()
			t.Cleanup(backend.Close)
			url := backend.URL
			if tc.h2c {
				url = strings.Replace(url, "http://", "h2c://", 1)
			}
			front := serveProxy(t, NewProxy(newTestPool(t, nil, url), quietOptions()))
			res, err := front.Client().Get(front.URL + "/via")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil || res.StatusCode != http.StatusOK || string(body) != "ok" {
				t.Fatalf("got %d %q, %v", res.StatusCode, body, err)
			}
			if got := res.Header.Values("Via"); len(got) != 1 || got[0] != tc.want {
				t.Errorf("Via %q, want [%q]", got, tc.want)
			}
		})
	}
}

// TestInformationalResponsesCleaned checks that 1xx responses relayed from
// the backend lose their hop-by-hop fields and Alt-Svc, keep the rest, and
// do not leak into the final response.
func TestInformationalResponsesCleaned(t *testing.T) {
	t.Parallel()
	type info struct {
		code   int
		header http.Header // what the backend sends with the 1xx
	}
	tests := []struct {
		name  string
		infos []info
		want  []http.Header // per 1xx: the exact end-to-end fields the client must see
	}{
		{
			name: "103 with Connection-named field and Alt-Svc",
			infos: []info{{103, http.Header{
				"Connection": {"X-Hop"}, "X-Hop": {"secret"}, "Alt-Svc": {`h3=":9999"`},
				"Link": {"</style.css>; rel=preload; as=style"},
			}}},
			want: []http.Header{{"Link": {"</style.css>; rel=preload; as=style"}}},
		},
		{
			name: "two 103s, each cleaned",
			infos: []info{
				{103, http.Header{"Connection": {"X-Hop, keep-alive"}, "X-Hop": {"1"}, "Keep-Alive": {"timeout=5"}, "Link": {"</a.js>; rel=preload"}}},
				{103, http.Header{"Connection": {"X-Other"}, "X-Other": {"2"}, "Alt-Svc": {"clear"}, "Link": {"</b.js>; rel=preload"}}},
			},
			want: []http.Header{
				{"Link": {"</a.js>; rel=preload"}},
				{"Link": {"</b.js>; rel=preload"}},
			},
		},
		{
			name:  "bare 102",
			infos: []info{{102, http.Header{"Connection": {"X-Hop"}, "X-Hop": {"1"}}}},
			want:  []http.Header{{}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				for _, in := range tc.infos {
					clear(h) // net/http keeps the map after a 1xx (RFC 8297)
					for k, v := range in.header {
						h[k] = v
					}
					w.WriteHeader(in.code)
				}
				clear(h)
				h.Set("X-Final", "yes")
				io.WriteString(w, "done")
			}))
			t.Cleanup(backend.Close)
			front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))

			var (
				mu   sync.Mutex
				got  []http.Header
				code []int
			)
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(c int, h textproto.MIMEHeader) error {
					mu.Lock()
					defer mu.Unlock()
					code = append(code, c)
					got = append(got, http.Header(h).Clone())
					return nil
				},
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front.URL+"/hints", nil)
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK || string(body) != "done" {
				t.Fatalf("final %d %q", res.StatusCode, body)
			}
			mu.Lock()
			defer mu.Unlock()
			wantCodes := make([]int, 0, len(tc.infos))
			for _, in := range tc.infos {
				wantCodes = append(wantCodes, in.code)
			}
			if !slices.Equal(code, wantCodes) {
				t.Fatalf("client got 1xx %v, want %v", code, wantCodes)
			}
			for i, h := range got {
				delete(h, "Date") // not sent on 1xx, but harmless if it ever is
				if !reflect.DeepEqual(h, tc.want[i]) {
					t.Errorf("1xx #%d header %v, want %v", i+1, h, tc.want[i])
				}
			}
			for _, k := range []string{"Link", "X-Hop", "X-Other", "Alt-Svc", "Keep-Alive"} {
				if v, ok := res.Header[k]; ok {
					t.Errorf("final response has 1xx field %s: %q", k, v)
				}
			}
			if res.Header.Get("X-Final") != "yes" || res.Header.Get("Via") != "1.1 gatehouse" {
				t.Errorf("final header %v", res.Header)
			}
		})
	}
}

// TestInformationalWriterPassesThrough checks that the 1xx-cleaning wrapper
// keeps the header map, flushing and hijacking of the writer it wraps.
func TestInformationalWriterPassesThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		serve func(t *testing.T, w http.ResponseWriter, inner http.ResponseWriter)
		check func(t *testing.T, res *http.Response, body string)
	}{
		{
			name: "same header map; trailers through TrailerPrefix",
			serve: func(t *testing.T, w, inner http.ResponseWriter) {
				if reflect.ValueOf(w.Header()).UnsafePointer() != reflect.ValueOf(inner.Header()).UnsafePointer() {
					t.Error("wrapper returns a different header map")
				}
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, "body")
				// As ReverseProxy does: flush to force chunking, then set
				// an undeclared trailer through the header map.
				if err := http.NewResponseController(w).Flush(); err != nil {
					t.Errorf("flush: %v", err)
				}
				w.Header().Set(http.TrailerPrefix+"X-Sum", "abc")
			},
			check: func(t *testing.T, res *http.Response, body string) {
				if body != "body" || res.Trailer.Get("X-Sum") != "abc" {
					t.Errorf("body %q trailer %v", body, res.Trailer)
				}
			},
		},
		{
			name: "flush",
			serve: func(t *testing.T, w, _ http.ResponseWriter) {
				io.WriteString(w, "part")
				if err := http.NewResponseController(w).Flush(); err != nil {
					t.Errorf("flush: %v", err)
				}
			},
			check: func(t *testing.T, res *http.Response, body string) {
				if body != "part" || res.ContentLength != -1 {
					t.Errorf("body %q length %d: not flushed before the end", body, res.ContentLength)
				}
			},
		},
		{
			name: "hijack",
			serve: func(t *testing.T, w, _ http.ResponseWriter) {
				conn, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Errorf("hijack: %v", err)
					return
				}
				defer conn.Close()
				brw.WriteString("HTTP/1.1 299 Hijacked\r\nContent-Length: 3\r\nConnection: close\r\n\r\nraw")
				brw.Flush()
			},
			check: func(t *testing.T, res *http.Response, body string) {
				if res.StatusCode != 299 || body != "raw" {
					t.Errorf("got %d %q", res.StatusCode, body)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := serveProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tc.serve(t, &informationalWriter{ResponseWriter: w}, w)
			}))
			res, err := srv.Client().Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, err := io.ReadAll(bufio.NewReader(res.Body))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, res, string(b))
		})
	}
}
