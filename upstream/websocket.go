package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// WebSocket passthrough.
//
// The handshake does not go through ReverseProxy: the proxy builds the
// backend request itself (with rewrite, so headers and X-Forwarded-* are
// those of any request) and sends it through the same forwarder, so failover
// on dial errors and the in-flight count work as for any request (the count
// stays up while the tunnel is open). Doing the round trip here rather than
// intercepting ReverseProxy's own upgrade code gives the tunnel what that
// code hides: the backend's net.Conn (taken from an httptrace GotConn hook;
// http.Transport speaks HTTP/1.1 to a WebSocket request and hands the
// connection over after a 101), whose deadlines carry the idle timeout and
// whose CloseWrite carries a half-close.
//
// An HTTP/1.1 tunnel runs on goroutines of its own and the handler returns
// right after the 101: a handler kept waiting would pin net/http's
// per-connection state (two 4 KiB buffers, the request) and a deep goroutine
// stack, about 35 KiB per idle tunnel instead of about 10. The access log
// therefore records the handshake (status 101) when it happens, and the
// tunnel's own "websocket closed" line records its end: bytes both ways,
// duration and why. An HTTP/2 or HTTP/3 tunnel lives in its stream, so that
// handler waits, and its access log line comes at the end.

// retryAfterTunnels is the Retry-After of the 503 for a route that has its
// limit of tunnels: tunnels are long-lived, so a slot may take a while.
const retryAfterTunnels = "5"

var (
	errWrongUpgrade   = errors.New("backend switched to a protocol other than websocket")
	errBadAccept      = errors.New("backend answered the WebSocket handshake with a wrong Sec-WebSocket-Accept")
	errNoUpgradedConn = errors.New("backend connection not available after 101")
)

// serveUpgrade serves an HTTP/1.1 WebSocket handshake: the backend's 101 is
// passed on, the client connection is hijacked, and a Tunnel joins the two
// on goroutines of its own until either side closes (or the Registry closes
// it); the handler returns at once.
func (p *proxy) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	// RFC 6455 §4.2.1: without a well-formed key and version 13 this is no
	// WebSocket handshake. Refusing it here also means the backend's 101 can
	// be checked against the key, so a backend endpoint that answers 101
	// without speaking WebSocket never becomes a raw pipe to the backend.
	key := r.Header.Get("Sec-Websocket-Key")
	if r.Header.Get("Sec-Websocket-Version") != websocket.Version {
		w.Header().Set("Sec-WebSocket-Version", websocket.Version)
		writeError(w, http.StatusUpgradeRequired)
		return
	}
	if !websocket.ValidKey(key) {
		writeError(w, http.StatusBadRequest)
		return
	}
	t, ok := p.reserve(w, r)
	if !ok {
		return
	}
	handedOff := false
	defer func() { // a panic before the tunnel runs must not keep its slot
		if !handedOff {
			t.Release()
		}
	}()
	res, backend, ok := p.openBackend(w, r, t, p.upgradeRequest(r), key, false)
	if !ok {
		return
	}
	h := w.Header()
	copyHeader(h, res.Header)
	h["Connection"] = []string{"Upgrade"}
	h["Upgrade"] = []string{websocket.Protocol}
	// net/http writes a 101 with the header as given (it keeps Connection
	// on a protocol switch, golang.org/issue/36381) when the connection is
	// hijacked; the access log sees the status on its way. Hijack cannot
	// fail for an HTTP/1.1 request to net/http's server.
	w.WriteHeader(http.StatusSwitchingProtocols)
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Release()
		_ = backend.Close()
		p.log.LogAttrs(r.Context(), slog.LevelError, "hijacking the client connection failed",
			slog.String("pool", p.pool.Name), slog.Any("error", err))
		panic(http.ErrAbortHandler)
	}
	client := &websocket.ConnEnd{Conn: c}
	if n := brw.Reader.Buffered(); n > 0 { // sent right behind the handshake
		b, _ := brw.Reader.Peek(n)
		client.Buffered = bytes.Clone(b)
	}
	handedOff = true
	go p.runTunnel(t, client, backend, newTunnelInfo(r, res))
}

// serveConnect serves a CONNECT request. An extended CONNECT for WebSocket
// (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3) is translated into an
// HTTP/1.1 handshake with the backend: GET with Upgrade: websocket,
// Sec-WebSocket-Version 13 and a Sec-WebSocket-Key of Gatehouse's (the
// client sends none); Sec-WebSocket-Protocol and -Extensions pass both ways.
// On the backend's 101 with the matching Sec-WebSocket-Accept the client
// gets 200 and the stream is tunnelled to the backend connection until the
// tunnel ends; the handler returns then. Any other CONNECT gets 400:
// Gatehouse is not a forward proxy.
func (p *proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsExtendedConnect(r) {
		writeError(w, http.StatusBadRequest)
		return
	}
	t, ok := p.reserve(w, r)
	if !ok {
		return
	}
	defer t.Release() // a no-op once the tunnel ran; frees the slot after a panic
	key := websocket.NewKey()
	out := p.upgradeRequest(r)
	out.Method = http.MethodGet
	delete(out.Header, ":protocol")
	out.Header["Sec-Websocket-Key"] = []string{key}
	out.Header["Sec-Websocket-Version"] = []string{websocket.Version}
	res, backend, ok := p.openBackend(w, r, t, out, key, true)
	if !ok {
		return
	}
	delete(res.Header, "Sec-Websocket-Accept") // HTTP/2 and HTTP/3 have no key to accept
	copyHeader(w.Header(), res.Header)
	// The stream lives as long as the WebSocket: lift the server's read and
	// write timeouts (per stream in HTTP/2). Not every writer supports
	// deadlines; then there are none to lift.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		t.Release()
		_ = backend.Close()
		return
	}
	// The stream is only valid while this handler runs: wait for the
	// tunnel. A stream reset by the client cancels the request context.
	stop := context.AfterFunc(r.Context(), t.Close)
	defer stop()
	p.runTunnel(t, websocket.NewStreamEnd(w, r), backend, newTunnelInfo(r, res))
}

// openBackend sends the handshake out for t and checks the answer. A 101
// that switches to WebSocket with Sec-WebSocket-Accept matching key yields
// the response, its header cleaned for the client, and the backend's end of
// the tunnel. Otherwise the client has been answered (the backend's own
// answer other than 101, or the error status), t released, and ok is false.
// For a translated extended CONNECT (connect), a backend 2xx is a 502: over
// HTTP/2 and HTTP/3 a 2xx would tell the client the tunnel is open.
func (p *proxy) openBackend(w http.ResponseWriter, r *http.Request, t *websocket.Tunnel, out *http.Request, key string, connect bool) (res *http.Response, backend *websocket.ConnEnd, ok bool) {
	res, conn, err := p.handshake(out)
	switch {
	case err != nil:
		t.Release()
		p.handleError(w, r, err)
		return nil, nil, false
	case connect && res.StatusCode >= 200 && res.StatusCode < 300:
		err = errWrongUpgrade
	case res.StatusCode != http.StatusSwitchingProtocols:
		t.Release()
		p.relayResponse(w, res)
		return nil, nil, false
	case !websocket.AcceptsUpgrade(res.StatusCode, res.Header):
		err = errWrongUpgrade
	case res.Header.Get("Sec-Websocket-Accept") != websocket.AcceptKey(key):
		err = errBadAccept
	}
	if err != nil {
		t.Release()
		_ = res.Body.Close()
		p.handleError(w, r, &attemptError{backend: servedBy(res), err: err})
		return nil, nil, false
	}
	backend = backendEnd(res, conn)
	cleanResponseHeader(res)
	return res, backend, true
}

// reserve claims a tunnel slot on the route before the backend is
// contacted; over the limit (or during shutdown) the client gets 503.
func (p *proxy) reserve(w http.ResponseWriter, r *http.Request) (*websocket.Tunnel, bool) {
	t, err := p.tunnels.Reserve(p.routeKey, p.maxTunnels)
	if err != nil {
		p.log.LogAttrs(r.Context(), slog.LevelWarn, "websocket refused",
			slog.String("route", p.routeName), slog.String("pool", p.pool.Name), slog.Any("error", err))
		w.Header().Set("Retry-After", retryAfterTunnels)
		writeError(w, http.StatusServiceUnavailable)
		return nil, false
	}
	return t, true
}

// upgradeRequest is the backend's copy of a WebSocket handshake: what
// ReverseProxy would send (rewrite: hop-by-hop headers removed, X-Forwarded-*
// and Via set, query cleaned) plus Connection: Upgrade and Upgrade:
// websocket, the only hop-by-hop fields kept. It has no body.
func (p *proxy) upgradeRequest(r *http.Request) *http.Request {
	out := r.Clone(r.Context())
	out.Body, out.GetBody, out.ContentLength = nil, nil, 0
	out.TransferEncoding, out.Close, out.RequestURI = nil, false, ""
	out.Form, out.PostForm, out.MultipartForm = nil, nil, nil
	h := out.Header
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(h, k)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // no Go default User-Agent
	}
	out.URL.RawQuery = cleanQueryParams(out.URL.RawQuery)
	p.rewrite(&httputil.ProxyRequest{In: r, Out: out})
	out.Trailer = nil
	h["Connection"] = []string{"Upgrade"}
	h["Upgrade"] = []string{websocket.Protocol}
	return out
}

// handshake sends out through the forwarder (upgrade transports, failover)
// and returns the response and, for a 101, the backend connection it came
// on.
func (p *proxy) handshake(out *http.Request) (*http.Response, net.Conn, error) {
	var got atomic.Pointer[net.Conn]
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := info.Conn
		got.Store(&c)
	}}
	out = out.WithContext(httptrace.WithClientTrace(out.Context(), trace))
	res, err := p.fwd.roundTrip(out, true)
	if err != nil {
		return nil, nil, err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		return res, nil, nil
	}
	c := got.Load()
	if _, writable := res.Body.(io.Writer); c == nil || *c == nil || !writable {
		_ = res.Body.Close()
		return nil, nil, &attemptError{backend: servedBy(res), err: errNoUpgradedConn}
	}
	return res, *c, nil
}

// backendEnd is the tunnel's backend side: reads go through the 101 body
// (which first returns what the transport had buffered), writes,
// half-close and deadlines go to the connection, and closing closes the
// body, which releases the backend's in-flight count.
func backendEnd(res *http.Response, c net.Conn) *websocket.ConnEnd {
	body := res.Body
	return &websocket.ConnEnd{Conn: c, Reader: body, OnClose: func() { _ = body.Close() }}
}

// tunnelInfo is what the end-of-tunnel log line tells about the request;
// it is copied out so that a tunnel keeps no request or response alive.
type tunnelInfo struct {
	proto, requestID, backend string
}

func newTunnelInfo(r *http.Request, res *http.Response) tunnelInfo {
	info := tunnelInfo{proto: r.Proto, requestID: r.Header.Get("X-Request-Id")}
	if b := servedBy(res); b != nil {
		info.backend = b.name
	}
	return info
}

// runTunnel runs t until it ends and logs how it went. Its frame stays on
// the stack of an idle tunnel, so it is kept small: the log line is built in
// logTunnel.
func (p *proxy) runTunnel(t *websocket.Tunnel, client, backend websocket.End, info tunnelInfo) {
	p.logTunnel(t.Run(client, backend, p.wsIdle), &info)
}

//go:noinline
func (p *proxy) logTunnel(st websocket.Stats, info *tunnelInfo) {
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "websocket closed",
		slog.String("route", p.routeName),
		slog.String("pool", p.pool.Name),
		slog.String("backend", info.backend),
		slog.String("proto", info.proto),
		slog.String("request_id", info.requestID),
		slog.Int64("bytes_in", st.Up),
		slog.Int64("bytes_out", st.Down),
		slog.Float64("duration_ms", float64(st.Duration.Microseconds())/1000),
		slog.String("reason", string(st.Reason)),
	)
}

// relayResponse passes on a backend's answer other than 101 to a WebSocket
// handshake (a 400, 403, 426...) as a normal response: cleaned header,
// streamed body, trailers. A failure while copying the body aborts the
// client's response, as ReverseProxy does.
func (p *proxy) relayResponse(w http.ResponseWriter, res *http.Response) {
	defer res.Body.Close()
	cleanResponseHeader(res)
	h := w.Header()
	copyHeader(h, res.Header)
	for k := range res.Trailer {
		h.Add("Trailer", k)
	}
	w.WriteHeader(res.StatusCode)
	buf := bufferPool{}.Get()
	defer bufferPool{}.Put(buf)
	if _, err := io.CopyBuffer(writerOnly{w}, res.Body, buf); err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = http.NewResponseController(w).Flush()
	for k, vv := range res.Trailer {
		h[k] = vv
	}
}

// writerOnly hides any ReadFrom of the ResponseWriter, so that CopyBuffer
// uses the pooled buffer.
type writerOnly struct{ io.Writer }

// servedBy is the backend whose response res is, or nil.
func servedBy(res *http.Response) *Backend {
	switch b := res.Body.(type) {
	case *trackedConn:
		return b.b
	case *trackedBody:
		return b.b
	}
	return nil
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// cleanQueryParams is ReverseProxy's query cleaning (CVE-2022-2880): a
// query with a semicolon or a malformed %-escape, or one that does not
// parse, is re-encoded from what parses; any other is kept byte for byte.
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	if _, err := url.ParseQuery(s); err != nil {
		return reencode(s)
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
