package middleware

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, incoming string
		keep           bool
	}{
		{"none", "", false},
		{"valid kept", "abc-123_X.y", true},
		{"too long replaced", strings.Repeat("a", 65), false},
		{"bad chars replaced", "a b<script>", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var seen string
			h := RequestID()(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = r.Header.Get(RequestIDHeader)
			}))
			req := httptest.NewRequest("GET", "/", nil)
			if tt.incoming != "" {
				req.Header.Set(RequestIDHeader, tt.incoming)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get(RequestIDHeader)
			if got != seen || got == "" {
				t.Fatalf("response id %q, request id %q", got, seen)
			}
			if tt.keep && got != tt.incoming {
				t.Fatalf("id %q, want kept %q", got, tt.incoming)
			}
			if !tt.keep && (got == tt.incoming || len(got) != 16) {
				t.Fatalf("id %q: want a fresh 16-hex id", got)
			}
		})
	}
}

func TestRecover(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := Recover(log)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("boom")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	if rec.Code != 500 || rec.Body.String() != "500 Internal Server Error\n" {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logs.String(), `"panic":"boom"`) {
		t.Fatalf("panic not logged: %s", logs.String())
	}

	// http.ErrAbortHandler passes through so net/http cuts the connection.
	abort := Recover(log)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	defer func() {
		v := recover()
		if err, ok := v.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
			t.Fatalf("recovered %v, want http.ErrAbortHandler", v)
		}
	}()
	abort.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := Chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := InfoFrom(r.Context())
		in.Route, in.Upstream = "example.com/api/", "api"
		r.URL.Path = "/rewritten" // later stages may rewrite; the log keeps the original
		w.WriteHeader(http.StatusContinue)
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("hello"))
	}), Recover(log), RequestID(), AccessLog(log, func(*http.Request) string { return "203.0.113.9" }, nil))
	// A real server: httptest.ResponseRecorder treats a 1xx as the final status.
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/api/x", nil)
	req.Host = "example.com"
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	srv.Close() // waits for the handler, so the log line is complete

	var line map[string]any
	if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
		t.Fatalf("log is not one JSON line: %v: %s", err, logs.String())
	}
	want := map[string]any{
		"msg": "request", "client_ip": "203.0.113.9", "method": "POST", "host": "example.com",
		"path": "/api/x", "status": float64(418), "bytes": float64(5), "route": "example.com/api/",
		"upstream": "api", "proto": "HTTP/1.1",
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v", k, line[k], v)
		}
	}
	if id, _ := line["request_id"].(string); len(id) != 16 {
		t.Errorf("request_id = %v", line["request_id"])
	}
	if _, ok := line["duration_ms"].(float64); !ok {
		t.Errorf("duration_ms missing: %v", line)
	}
}

func TestAccessLogPanicIs500(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := Chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("x") }),
		Recover(log), AccessLog(log, nil, nil))
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "[2001:db8::1]:5555"
	h.ServeHTTP(httptest.NewRecorder(), req)
	if !strings.Contains(logs.String(), `"status":500`) || !strings.Contains(logs.String(), `"client_ip":"2001:db8::1"`) {
		t.Fatalf("want status 500 and peer ip logged: %s", logs.String())
	}
}

func TestWritersUnwrapForFlush(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewJSONHandler(&bytes.Buffer{}, nil))
	h := Chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush through the stack: %v", err)
		}
	}), Recover(log), RequestID(), AccessLog(log, nil, nil))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if !rec.Flushed {
		t.Fatal("flush did not reach the connection")
	}
}

// TestRequestIDResponseHeader checks when the id reaches the response: on the
// final header however it is sent, never lost to a cleared map or doubled by
// an added copy, and still there for Recover's 500.
func TestRequestIDResponseHeader(t *testing.T) {
	t.Parallel()
	const id = "req-42"
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		wantCode int
	}{
		{"nothing written", func(w http.ResponseWriter, r *http.Request) {}, http.StatusOK},
		{"write only", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("x")) }, http.StatusOK},
		{"flush only", func(w http.ResponseWriter, r *http.Request) {
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}, http.StatusOK},
		{"1xx clears the map, then a copy is added", func(w http.ResponseWriter, r *http.Request) {
			h := w.Header() // what httputil.ReverseProxy does
			h.Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			clear(h)
			h.Add(RequestIDHeader, "from-backend")
			w.WriteHeader(http.StatusAccepted)
		}, http.StatusAccepted},
		{"type-asserted Flusher", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add(RequestIDHeader, "stale")
			w.(http.Flusher).Flush()
		}, http.StatusOK},
		{"panic before writing", func(w http.ResponseWriter, r *http.Request) { panic("boom") }, http.StatusInternalServerError},
		{"panic after a 1xx", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			clear(w.Header())
			panic("boom")
		}, http.StatusInternalServerError},
	}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(Chain(tc.handler, Recover(log), RequestID(), AccessLog(log, nil, nil)))
			t.Cleanup(srv.Close)
			req, _ := http.NewRequest("GET", srv.URL, nil)
			req.Header.Set(RequestIDHeader, id)
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", res.StatusCode, tc.wantCode)
			}
			if got := res.Header.Values(RequestIDHeader); len(got) != 1 || got[0] != id {
				t.Errorf("X-Request-Id %q, want exactly [%q]", got, id)
			}
		})
	}
}

func TestRequestIDWriterHijack(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(RequestID()(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		// Like ReverseProxy relaying a 101: the header map is written by hand.
		res := &http.Response{StatusCode: 299, ProtoMajor: 1, ProtoMinor: 1, Header: h, Close: true}
		_ = res.Write(brw)
		_ = brw.Flush()
	})))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set(RequestIDHeader, "hj-1")
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 299 || res.Header.Get(RequestIDHeader) != "hj-1" {
		t.Fatalf("got %d %v", res.StatusCode, res.Header)
	}
}
