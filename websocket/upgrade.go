package websocket

import (
	"crypto/rand"
	"crypto/sha1" // #nosec G505 -- RFC 6455 §4.2.2 fixes SHA-1 for Sec-WebSocket-Accept
	"encoding/base64"
	"net/http"
	"net/textproto"
	"strings"
)

// Protocol is WebSocket's upgrade token (RFC 6455 §11.2) and its :protocol
// value in an extended CONNECT (RFC 8441 §4).
const Protocol = "websocket"

// Version is the only WebSocket version there is (RFC 6455 §4.1).
const Version = "13"

// acceptGUID is the magic string of RFC 6455 §1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// HasToken reports whether any of the comma-separated lists in values (all
// lines of one header field) holds token: ASCII case-insensitive, optional
// whitespace trimmed, parameters after ';' ignored. Empty list elements are
// skipped, as RFC 9110 §5.6.1 asks of recipients.
func HasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok, _, _ = strings.Cut(tok, ";")
			if strings.EqualFold(textproto.TrimString(tok), token) {
				return true
			}
		}
	}
	return false
}

// AsksUpgrade reports whether h asks to switch to WebSocket: Connection lists
// "upgrade" (possibly among other options, on any of its lines) and Upgrade
// lists "websocket" (possibly among other protocols, such as h2c, which
// Gatehouse never tunnels). It looks at headers only; IsUpgrade also checks
// the method and version of a request.
func AsksUpgrade(h http.Header) bool {
	return HasToken(h["Connection"], "upgrade") && HasToken(h["Upgrade"], Protocol)
}

// IsUpgrade reports whether r is a WebSocket opening handshake over
// HTTP/1.1: a GET of HTTP/1.1 or later (Upgrade means nothing in HTTP/1.0,
// RFC 9110 §7.8, and is not allowed in HTTP/2 and HTTP/3) whose headers ask
// for "websocket" (AsksUpgrade). Requests that ask to upgrade to anything else
// are ordinary requests for Gatehouse: their Upgrade is hop-by-hop and is
// removed.
func IsUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && r.ProtoMajor == 1 && r.ProtoMinor >= 1 && AsksUpgrade(r.Header)
}

// ExtendedConnectProtocol returns the :protocol pseudo-header of an extended
// CONNECT request (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3) and "" for any
// other request, a classic CONNECT included. net/http's HTTP/2 server shows
// :protocol as the request header ":protocol" (and only when extended CONNECT
// is switched on, see package xconnect); quic-go's HTTP/3 server puts it in
// r.Proto, leaving ProtoMajor at 3.
func ExtendedConnectProtocol(r *http.Request) string {
	if r.Method != http.MethodConnect {
		return ""
	}
	if v := r.Header[":protocol"]; len(v) > 0 {
		return v[0]
	}
	if r.ProtoMajor == 3 && r.Proto != "HTTP/3.0" && r.Proto != "HTTP/3" {
		return r.Proto
	}
	return ""
}

// IsExtendedConnect reports whether r opens a WebSocket over an HTTP/2 or
// HTTP/3 stream: an extended CONNECT whose :protocol is "websocket".
func IsExtendedConnect(r *http.Request) bool {
	return strings.EqualFold(ExtendedConnectProtocol(r), Protocol)
}

// AcceptsUpgrade reports whether a response to a WebSocket opening handshake
// switched to WebSocket: status 101, Connection listing "upgrade" and Upgrade
// naming "websocket" (RFC 6455 §4.2.2). A 101 to another protocol is not
// acceptable: the client asked for WebSocket.
func AcceptsUpgrade(status int, h http.Header) bool {
	if status != http.StatusSwitchingProtocols || !HasToken(h["Connection"], "upgrade") {
		return false
	}
	up := h["Upgrade"]
	return len(up) == 1 && strings.EqualFold(textproto.TrimString(up[0]), Protocol)
}

// NewKey returns a fresh Sec-WebSocket-Key: 16 random bytes, base64-encoded
// (RFC 6455 §4.1). Gatehouse needs one when it translates an HTTP/2 or HTTP/3
// WebSocket, whose client sends no key, into an HTTP/1.1 handshake.
func NewKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.StdEncoding.EncodeToString(b[:])
}

// AcceptKey is the Sec-WebSocket-Accept a server must answer to key
// (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)).
func AcceptKey(key string) string {
	h := sha1.New() // #nosec G401 -- mandated by RFC 6455
	h.Write([]byte(key))
	h.Write([]byte(acceptGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// ValidKey reports whether key is a Sec-WebSocket-Key as RFC 6455 §4.1
// requires: the base64 encoding of 16 bytes.
func ValidKey(key string) bool {
	b, err := base64.StdEncoding.DecodeString(key)
	return err == nil && len(b) == 16
}
