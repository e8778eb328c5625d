package upstream

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/websocket"
)

func TestRemoveHopHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "fixed list",
			in: http.Header{
				"Connection":          {"keep-alive"},
				"Proxy-Connection":    {"keep-alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Authenticate":  {"Basic"},
				"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
				"Te":                  {"trailers"},
				"Trailer":             {"X-Sum"},
				"Transfer-Encoding":   {"chunked"},
				"Upgrade":             {"websocket"},
				"Accept":              {"*/*"},
			},
			want: http.Header{"Accept": {"*/*"}},
		},
		{
			name: "header named in Connection",
			in: http.Header{
				"Connection": {"X-Secret"},
				"X-Secret":   {"1"},
				"X-Other":    {"2"},
			},
			want: http.Header{"X-Other": {"2"}},
		},
		{
			name: "multiple Connection lines, mixed case, spaces, empty tokens",
			in: http.Header{
				"Connection": {"x-one , ,X-TWO", "  x-three"},
				"X-One":      {"1"},
				"X-Two":      {"2"},
				"X-Three":    {"3"},
				"X-Four":     {"4"},
			},
			want: http.Header{"X-Four": {"4"}},
		},
		{
			name: "end-to-end headers untouched",
			in:   http.Header{"Authorization": {"Bearer x"}, "Via": {"1.1 a"}, "Cookie": {"a=b"}},
			want: http.Header{"Authorization": {"Bearer x"}, "Via": {"1.1 a"}, "Cookie": {"a=b"}},
		},
		{
			name: "TE dropped on responses even with trailers",
			in:   http.Header{"Te": {"trailers"}},
			want: http.Header{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			RemoveHopHeaders(tc.in)
			if !reflect.DeepEqual(tc.in, tc.want) {
				t.Errorf("got %v, want %v", tc.in, tc.want)
			}
		})
	}
}

func TestRemoveRequestHopHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{"TE trailers kept", http.Header{"Te": {"trailers"}}, http.Header{"Te": {"trailers"}}},
		{"TE gzip dropped", http.Header{"Te": {"gzip"}}, http.Header{}},
		{"TE list with trailers reduced", http.Header{"Te": {"gzip;q=0.5, Trailers"}}, http.Header{"Te": {"trailers"}}},
		{"TE named in Connection still kept", http.Header{"Connection": {"TE"}, "Te": {"trailers"}}, http.Header{"Te": {"trailers"}}},
		{
			"Upgrade request becomes plain",
			http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Key": {"k"}},
			http.Header{"Sec-Websocket-Key": {"k"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			RemoveRequestHopHeaders(tc.in)
			if !reflect.DeepEqual(tc.in, tc.want) {
				t.Errorf("got %v, want %v", tc.in, tc.want)
			}
		})
	}
}

func TestHeaderHasToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		values []string
		token  string
		want   bool
	}{
		{[]string{"keep-alive, Upgrade"}, "upgrade", true},
		{[]string{"keep-alive", "upgrade"}, "upgrade", true},
		{[]string{"upgraded"}, "upgrade", false},
		{nil, "upgrade", false},
		{[]string{"deflate;q=0.5, trailers;q=1"}, "trailers", true},
	}
	for _, tc := range tests {
		if got := websocket.HasToken(tc.values, tc.token); got != tc.want {
			t.Errorf("websocket.HasToken(%q, %q) = %v, want %v", tc.values, tc.token, got, tc.want)
		}
	}
}

func TestViaEntry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		major, minor int
		want         string
	}{
		{1, 0, "1.0 gatehouse"}, {1, 1, "1.1 gatehouse"}, {2, 0, "2.0 gatehouse"}, {3, 0, "3.0 gatehouse"}, {0, 9, "0.9 gatehouse"},
	}
	for _, tc := range tests {
		if got := viaEntry(tc.major, tc.minor); got != tc.want {
			t.Errorf("viaEntry(%d, %d) = %q, want %q", tc.major, tc.minor, got, tc.want)
		}
	}
}
