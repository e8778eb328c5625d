package config

import (
	"strings"
	"testing"
)

func TestTLSSiteRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc, wantErr string
	}{
		{"auto wildcard", "sites: [{hosts: ['*.example.com'], routes: [{respond: {}}]}]",
			`t.yaml:1:18: host "*.example.com" needs tls: on_demand, internal, off or a {cert, key} pair`},
		{"auto star", "sites: [{hosts: ['*'], tls: auto, routes: [{respond: {}}]}]",
			`t.yaml:1:18: host "*" needs tls: on_demand`},
		{"auto local wildcard ok", "sites: [{hosts: ['*.app.localhost'], routes: [{respond: {}}]}]", ""},
		{"internal wildcard ok", "sites: [{hosts: ['*.example.com'], tls: internal, routes: [{respond: {}}]}]", ""},
		{"on_demand without ask", "sites: [{hosts: ['*'], tls: on_demand, routes: [{respond: {}}]}]",
			"t.yaml:1:29: tls: on_demand needs global.on_demand.ask"},
		{"on_demand with ask", "global: {on_demand: {ask: 'http://127.0.0.1:9/ok'}}\nsites: [{hosts: ['*'], tls: on_demand, routes: [{respond: {}}]}]", ""},
		{"eab half", "global: {acme: {eab: {key_id: k}}}\nsites: [{hosts: [a.example], routes: [{respond: {}}]}]",
			"eab needs both key_id and mac_key"},
		{"fallback bad url", "global: {acme: {fallback: {ca: 'ftp://x'}}}\nsites: [{hosts: [a.example], routes: [{respond: {}}]}]",
			"bad acme fallback ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("t.yaml", []byte(tt.doc))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestReviewedRules(t *testing.T) {
	t.Parallel()
	site := func(route string) string {
		return "sites: [{hosts: [a.example], tls: off, routes: [" + route + "]}]"
	}
	tests := []struct {
		name, doc string
		want      []string // substrings, each must appear; nil = valid
	}{
		{"respond 1xx", site("{respond: {status: 103}}"), []string{"respond status must be 200..599, got 103"}},
		{"body on 204", site("{respond: {status: 204, body: x}}"), []string{"respond status 204 cannot have a body"}},
		{"encoded path", site("{path: '/caf%C3%A9/', respond: {}}"), []string{"must be written decoded"}},
		{"dots inside a segment ok", site("{path: /v1..2/, respond: {}}"), nil},
		{"dot segment", site("{path: /a/./b, respond: {}}"), []string{`"." or ".." segments`}},
		{"unreadable upstream ca", "upstreams: {s: {backends: [{url: 'https://b'}], tls: {ca: /nonexistent/ca.pem}}}\n" + site("{upstream: s}"),
			[]string{`t.yaml:1:59: upstream tls ca "/nonexistent/ca.pem" cannot be read`}},
		{"unreadable ca_root", "global: {acme: {ca_root: /nonexistent/root.pem}}\n" + site("{respond: {}}"),
			[]string{`acme ca_root "/nonexistent/root.pem" cannot be read`}},
		{"unsupported reported with other errors", site("{static: {root: .}}, {path: /x, upstream: nope}"),
			[]string{"static routes are not available in this build yet", `unknown upstream "nope"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("t.yaml", []byte(tt.doc))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
