// Package websocket owns Gatehouse's WebSocket passthrough below the HTTP
// layer: recognising an upgrade (an HTTP/1.1 Upgrade per RFC 9110 §7.8 and
// RFC 6455 §4, or an extended CONNECT per RFC 8441 and RFC 9220), the
// handshake arithmetic a translating proxy needs (NewKey, AcceptKey), and the
// Tunnel that copies bytes both ways between the client's side (a hijacked
// connection or an HTTP/2 or HTTP/3 stream) and the backend connection once
// both handshakes are done, with half-close, an idle timeout and pooled
// buffers. A Registry tracks every open tunnel so that limits per route hold
// and shutdown or reload can close tunnels deliberately.
//
// The package never parses WebSocket frames: after the handshake the bytes
// are the client's and the backend's business, extensions such as
// permessage-deflate included. It imports the standard library only; the
// forwarder in package upstream does the HTTP side (routing, the round trip
// to the backend, hijacking) and hands both ends to a Tunnel.
//
// Subpackage xconnect switches on the standard library's support for
// extended CONNECT in its HTTP/2 server, which is off by default.
package websocket
