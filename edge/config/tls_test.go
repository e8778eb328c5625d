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
