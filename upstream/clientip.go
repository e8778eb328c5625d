package upstream

import (
	"net/http"
	"net/netip"
	"strings"
)

// TrustedProxies decides which peers may set X-Forwarded-For and the other
// forwarding headers: only a peer whose address lies in one of its prefixes
// is believed. A nil *TrustedProxies trusts nobody.
//
// A TrustedProxies is immutable after NewTrustedProxies and safe for
// concurrent use.
type TrustedProxies struct {
	prefixes []netip.Prefix
}

// NewTrustedProxies returns the set of trusted networks p (copied; invalid
// prefixes are ignored). IPv4-mapped IPv6 peers are matched as IPv4.
func NewTrustedProxies(p []netip.Prefix) *TrustedProxies {
	t := &TrustedProxies{prefixes: make([]netip.Prefix, 0, len(p))}
	for _, pr := range p {
		if !pr.IsValid() {
			continue
		}
		if pr.Addr().Is4In6() && pr.Bits() >= 96 {
			pr = netip.PrefixFrom(pr.Addr().Unmap(), pr.Bits()-96)
		}
		t.prefixes = append(t.prefixes, pr.Masked())
	}
	return t
}

// Contains reports whether addr is a trusted proxy. It is false for a nil
// receiver and for an invalid addr.
func (t *TrustedProxies) Contains(addr netip.Addr) bool {
	if t == nil || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	for _, p := range t.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ClientIP is the client address as determined through trusted proxies: if
// the TCP peer (r.RemoteAddr) is not trusted, the peer; else walk
// X-Forwarded-For (all its lines, in order) from the right, skipping trusted
// addresses, and return the first untrusted one (or the left-most if all are
// trusted). A garbage entry stops the walk and the last valid address seen is
// returned. Entries may carry a port ("1.2.3.4:80", "[::1]:80"). The result is
// invalid only when r.RemoteAddr does not parse (for example a Unix socket).
// A nil receiver trusts nobody, so it returns the peer.
func (t *TrustedProxies) ClientIP(r *http.Request) netip.Addr {
	return t.clientIP(r, parseHostPort(r.RemoteAddr))
}

func (t *TrustedProxies) clientIP(r *http.Request, peer netip.Addr) netip.Addr {
	if !t.Contains(peer) {
		return peer
	}
	last := peer
	lines := r.Header["X-Forwarded-For"]
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for {
			var entry string
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				entry, line = line[j+1:], line[:j]
			} else {
				entry, line = line, ""
			}
			a := parseForwardedAddr(entry)
			if !a.IsValid() {
				return last
			}
			last = a
			if !t.Contains(a) {
				return a
			}
			if line == "" {
				break
			}
		}
	}
	return last
}

// parseHostPort parses a RemoteAddr ("ip:port", or a bare ip) into an
// unmapped address; it returns the zero Addr when s is not an IP address.
func parseHostPort(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

// parseForwardedAddr parses one X-Forwarded-For entry: an IP address,
// optionally bracketed or with a port. Anything else is the zero Addr.
func parseForwardedAddr(s string) netip.Addr {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Addr{}
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return a.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
