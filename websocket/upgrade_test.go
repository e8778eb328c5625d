package websocket

import (
	"net/http"
	"testing"
)

func TestHasToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		values []string
		token  string
		want   bool
	}{
		{[]string{"Upgrade"}, "upgrade", true},
		{[]string{"keep-alive, Upgrade"}, "upgrade", true},
		{[]string{"keep-alive", "UPGRADE"}, "upgrade", true},
		{[]string{" keep-alive ,\tupgrade "}, "upgrade", true},
		{[]string{"upgraded"}, "upgrade", false},
		{[]string{",,upgrade,"}, "upgrade", true},
		{[]string{"h2c, WebSocket"}, "websocket", true},
		{[]string{"websocket/13"}, "websocket", false},
		{nil, "upgrade", false},
		{[]string{""}, "upgrade", false},
	}
	for _, tc := range tests {
		if got := HasToken(tc.values, tc.token); got != tc.want {
			t.Errorf("HasToken(%q, %q) = %v, want %v", tc.values, tc.token, got, tc.want)
		}
	}
}

func TestIsUpgrade(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		method string
		major  int
		minor  int
		header http.Header
		want   bool
	}{
		{"plain", "GET", 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, true},
		{"mixed case", "GET", 1, 1, http.Header{"Connection": {"keep-alive, UPGRADE"}, "Upgrade": {"WebSocket"}}, true},
		{"connection on two lines", "GET", 1, 1, http.Header{"Connection": {"keep-alive", "upgrade"}, "Upgrade": {"websocket"}}, true},
		{"several protocols", "GET", 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c, websocket"}}, true},
		{"h2c only", "GET", 1, 1, http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}}, false},
		{"no connection token", "GET", 1, 1, http.Header{"Connection": {"keep-alive"}, "Upgrade": {"websocket"}}, false},
		{"no upgrade header", "GET", 1, 1, http.Header{"Connection": {"Upgrade"}}, false},
		{"HTTP/1.0", "GET", 1, 0, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
		{"HTTP/2", "GET", 2, 0, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
		{"POST", "POST", 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
	}
	for _, tc := range tests {
		r := &http.Request{Method: tc.method, ProtoMajor: tc.major, ProtoMinor: tc.minor, Header: tc.header}
		if got := IsUpgrade(r); got != tc.want {
			t.Errorf("%s: IsUpgrade = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestExtendedConnect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		r     *http.Request
		proto string
		ws    bool
	}{
		{"h2 websocket", &http.Request{Method: "CONNECT", Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{":protocol": {"websocket"}}}, "websocket", true},
		{"h2 other", &http.Request{Method: "CONNECT", Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{":protocol": {"connect-udp"}}}, "connect-udp", false},
		{"h2 classic CONNECT", &http.Request{Method: "CONNECT", Proto: "HTTP/2.0", ProtoMajor: 2, Header: http.Header{}}, "", false},
		{"h3 websocket", &http.Request{Method: "CONNECT", Proto: "websocket", ProtoMajor: 3, Header: http.Header{}}, "websocket", true},
		{"h3 classic CONNECT", &http.Request{Method: "CONNECT", Proto: "HTTP/3.0", ProtoMajor: 3, Header: http.Header{}}, "", false},
		{"GET", &http.Request{Method: "GET", Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{":protocol": {"websocket"}}}, "", false},
		{"h1 CONNECT", &http.Request{Method: "CONNECT", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}, "", false},
	}
	for _, tc := range tests {
		if got := ExtendedConnectProtocol(tc.r); got != tc.proto {
			t.Errorf("%s: ExtendedConnectProtocol = %q, want %q", tc.name, got, tc.proto)
		}
		if got := IsExtendedConnect(tc.r); got != tc.ws {
			t.Errorf("%s: IsExtendedConnect = %v, want %v", tc.name, got, tc.ws)
		}
	}
}

func TestAcceptsUpgrade(t *testing.T) {
	t.Parallel()
	ok := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	if !AcceptsUpgrade(101, ok) {
		t.Error("101 websocket not accepted")
	}
	if AcceptsUpgrade(200, ok) {
		t.Error("200 accepted as a switch")
	}
	if AcceptsUpgrade(101, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}) {
		t.Error("101 to h2c accepted for a WebSocket handshake")
	}
	if AcceptsUpgrade(101, http.Header{"Upgrade": {"websocket"}}) {
		t.Error("101 without Connection: upgrade accepted")
	}
}

func TestKeys(t *testing.T) {
	t.Parallel()
	// RFC 6455 §1.3's example.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("AcceptKey = %q", got)
	}
	a, b := NewKey(), NewKey()
	if len(a) != 24 || a == b {
		t.Errorf("NewKey gave %q and %q", a, b)
	}
}
