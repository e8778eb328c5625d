package cache

import (
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"testing"
)

// Trailers set by the origin after the body reach the client through the
// cache; such responses are not stored.
func TestTrailersPassThrough(t *testing.T) {
	t.Parallel()
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "data")
		w.Header().Set("X-Checksum", "abc")
	})
	resp, err := env.client.Get(env.url("/t"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "data" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("body %q trailer %v", body, resp.Trailer)
	}
	if cs := resp.Header.Get("Cache-Status"); cs != "gatehouse; fwd=uri-miss" {
		t.Fatalf("Cache-Status = %q", cs)
	}
}

// A 103 Early Hints reaches the client with its own fields, which do not
// leak into the final response.
func TestEarlyHintsPassThrough(t *testing.T) {
	t.Parallel()
	env := newEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = io.WriteString(w, "page")
	})
	var hints []string
	trace := &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints {
				hints = append(hints, h.Get("Link"))
			}
			return nil
		},
	}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, env.url("/p"), nil)
	resp, err := env.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(hints) != 1 || hints[0] != "</style.css>; rel=preload" {
		t.Fatalf("early hints %q", hints)
	}
	if string(body) != "page" || resp.Header.Get("Link") != "" {
		t.Fatalf("final response body %q Link %q", body, resp.Header.Get("Link"))
	}
	env.waitIdle()
	expectStatus(t, env.get("/p"), "gatehouse; hit; ttl=60")
}
