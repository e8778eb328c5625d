package upstream

import (
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/gatehouse-proxy/gatehouse/websocket"
)

// hopHeaders are the hop-by-hop fields of RFC 9110 §7.6.1 plus the legacy
// ones of RFC 2616 §13.5.1 that proxies still meet (Keep-Alive,
// Proxy-Connection). Keys are canonical.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// viaPseudonym names Gatehouse in Via (RFC 9110 §7.6.3).
const viaPseudonym = "gatehouse"

// RemoveHopHeaders deletes from h the hop-by-hop header fields: Connection and
// every field it names (comma-separated, case-insensitive, across all
// Connection lines), Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
// Upgrade, Proxy-Authorization, Proxy-Authenticate and Trailer. It is used on
// responses as is; requests use RemoveRequestHopHeaders.
//
// RemoveHopHeaders modifies h in place; it is safe for concurrent use on
// distinct headers.
func RemoveHopHeaders(h http.Header) {
	for _, line := range h["Connection"] {
		for line != "" {
			var tok string
			tok, line, _ = strings.Cut(line, ",")
			if tok = textproto.TrimString(tok); tok != "" {
				h.Del(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// RemoveRequestHopHeaders is RemoveHopHeaders for a request that is about to
// be forwarded: when the client's TE listed "trailers", the forwarded request
// keeps "TE: trailers" (telling the backend that trailers will be relayed);
// any other TE value is dropped.
func RemoveRequestHopHeaders(h http.Header) {
	trailers := websocket.HasToken(h["Te"], "trailers")
	RemoveHopHeaders(h)
	if trailers {
		h["Te"] = []string{"trailers"}
	}
}

// setForwardingHeaders sets X-Forwarded-For, X-Forwarded-Proto,
// X-Forwarded-Host, X-Real-IP and Via on out (the request to the backend)
// from in (the request received) following the trust rules of t:
//
//   - X-Forwarded-For: a trusted peer's chain with the peer appended; from
//     an untrusted peer, just the peer (whatever it sent is discarded).
//   - X-Forwarded-Proto and X-Forwarded-Host: a trusted peer's values are
//     kept; otherwise "https"/"http" from in.TLS, and in.Host.
//   - X-Real-IP: t.ClientIP(in), always overwriting what the client sent.
//   - Via: "<received version> gatehouse" appended to any Via received.
//
// A peer address that does not parse (a Unix socket) is never trusted and
// yields no X-Forwarded-For or X-Real-IP.
func setForwardingHeaders(out, in *http.Request, t *TrustedProxies) {
	h := out.Header
	peer := parseHostPort(in.RemoteAddr)
	trusted := peer.IsValid() && t.Contains(peer)
	// One backing array for the five values (this runs for every proxied
	// request): each header gets a one-element, full-capacity slice of it,
	// so an append by a later stage copies instead of overwriting a neighbour.
	vals := new([5]string)
	set := func(i int, key, v string) { vals[i] = v; h[key] = vals[i : i+1 : i+1] }

	var peerStr string
	if !peer.IsValid() {
		delete(h, "X-Forwarded-For")
	} else {
		peerStr = peer.String()
		chain := peerStr
		if prior := in.Header["X-Forwarded-For"]; trusted && len(prior) > 0 {
			chain = strings.Join(prior, ", ") + ", " + chain
		}
		set(0, "X-Forwarded-For", chain)
	}

	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	host := in.Host
	if trusted {
		if v := in.Header.Get("X-Forwarded-Proto"); v != "" {
			proto = v
		}
		if v := in.Header.Get("X-Forwarded-Host"); v != "" {
			host = v
		}
	}
	set(1, "X-Forwarded-Proto", proto)
	if host != "" {
		set(2, "X-Forwarded-Host", host)
	} else {
		delete(h, "X-Forwarded-Host")
	}

	if ip := t.clientIP(in, peer); ip.IsValid() {
		s := peerStr
		if ip != peer {
			s = ip.String()
		}
		set(3, "X-Real-Ip", s)
	} else {
		delete(h, "X-Real-Ip")
	}

	via := viaEntry(in.ProtoMajor, in.ProtoMinor)
	if prior := h["Via"]; len(prior) > 0 {
		via = strings.Join(prior, ", ") + ", " + via
	}
	set(4, "Via", via)
}

// viaEntry is our Via entry for a request received with the given version.
func viaEntry(major, minor int) string {
	switch {
	case major == 1 && minor == 1:
		return "1.1 " + viaPseudonym
	case major == 1 && minor == 0:
		return "1.0 " + viaPseudonym
	case major == 2:
		return "2.0 " + viaPseudonym
	case major == 3:
		return "3.0 " + viaPseudonym
	}
	return strconv.Itoa(major) + "." + strconv.Itoa(minor) + " " + viaPseudonym
}
