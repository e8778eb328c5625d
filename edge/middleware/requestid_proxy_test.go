package middleware_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
	"github.com/gatehouse-proxy/gatehouse/edge/middleware"
	"github.com/gatehouse-proxy/gatehouse/upstream"
)

// TestRequestIDThroughProxy runs the real stack (Recover, RequestID,
// AccessLog, then the proxy) in front of a real backend and checks that the
// final response carries exactly one X-Request-Id, the request's, whatever
// 1xx responses the backend sends and whether it echoes the id.
func TestRequestIDThroughProxy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		incoming    string // X-Request-Id the client sends ("" none)
		expect100   bool   // POST with Expect: 100-continue
		earlyHints  int    // 103 responses the backend sends first
		echo        string // "request": echo the id; other: send this id; "": none
		wantKept    bool   // the incoming id is the request's id
		wantClient1 bool   // the client sees a 1xx
	}{
		{name: "plain GET", wantKept: false},
		{name: "plain GET, id kept", incoming: "client-id.1", wantKept: true},
		{name: "Expect 100-continue POST", incoming: "upload-1", expect100: true, wantKept: true, wantClient1: true},
		{name: "Expect 100-continue POST, fresh id", expect100: true, wantClient1: true},
		{name: "103 Early Hints", incoming: "hints-1", earlyHints: 1, wantKept: true, wantClient1: true},
		{name: "two 103s, fresh id", earlyHints: 2, wantClient1: true},
		{name: "backend echoes the id", incoming: "echo-1", echo: "request", wantKept: true},
		{name: "backend echoes the fresh id", echo: "request"},
		{name: "backend sends its own id", incoming: "mine", echo: "backend-own", wantKept: true},
		{name: "103, echo and 100-continue", incoming: "all-1", expect100: true, earlyHints: 1, echo: "request", wantKept: true, wantClient1: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen := r.Header.Get(middleware.RequestIDHeader)
				if _, err := io.Copy(io.Discard, r.Body); err != nil { // sends 100 Continue if asked
					return
				}
				h := w.Header()
				for range tc.earlyHints {
					h.Set("Link", "</style.css>; rel=preload; as=style")
					w.WriteHeader(http.StatusEarlyHints)
				}
				clear(h)
				switch tc.echo {
				case "":
				case "request":
					h.Set(middleware.RequestIDHeader, seen)
				default:
					h.Set(middleware.RequestIDHeader, tc.echo)
				}
				io.WriteString(w, seen) // the id the backend received
			}))
			t.Cleanup(backend.Close)
			front := httptest.NewServer(middleware.Chain(newProxy(t, backend.URL),
				middleware.Recover(quietLog()), middleware.RequestID(), middleware.AccessLog(quietLog(), nil, nil)))
			t.Cleanup(front.Close)

			client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 60e9}}
			t.Cleanup(client.CloseIdleConnections)
			var got1xx atomic.Int32
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(int, textproto.MIMEHeader) error { got1xx.Add(1); return nil },
				Got100Continue: func() { got1xx.Add(1) },
			})
			var req *http.Request
			if tc.expect100 {
				req, _ = http.NewRequestWithContext(ctx, http.MethodPost, front.URL+"/up", strings.NewReader("payload"))
				req.Header.Set("Expect", "100-continue")
			} else {
				req, _ = http.NewRequestWithContext(ctx, http.MethodGet, front.URL+"/get", nil)
			}
			if tc.incoming != "" {
				req.Header.Set(middleware.RequestIDHeader, tc.incoming)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil || res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, %v", res.StatusCode, err)
			}
			backendSaw := string(body)
			if tc.wantKept && backendSaw != tc.incoming {
				t.Errorf("backend saw id %q, want the client's %q", backendSaw, tc.incoming)
			}
			if !tc.wantKept && len(backendSaw) != 16 {
				t.Errorf("backend saw id %q, want a fresh one", backendSaw)
			}
			if got := res.Header.Values(middleware.RequestIDHeader); len(got) != 1 || got[0] != backendSaw {
				t.Errorf("response X-Request-Id %q, want exactly [%q]", got, backendSaw)
			}
			if (got1xx.Load() > 0) != tc.wantClient1 {
				t.Errorf("client saw %d 1xx responses, want some: %v", got1xx.Load(), tc.wantClient1)
			}
		})
	}
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newProxy is the real forwarder over one backend.
func newProxy(t *testing.T, backendURL string) http.Handler {
	t.Helper()
	u, err := url.Parse(backendURL)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := upstream.NewPool(&config.Upstream{Name: "test", Backends: []*config.Backend{{URL: u, Weight: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return upstream.NewProxy(pool, upstream.Options{Logger: quietLog()})
}
