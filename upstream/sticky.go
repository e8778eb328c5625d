package upstream

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// Sticky sessions (balance: cookie).
//
// The cookie's value names a backend by its stable id (a hash of its URL,
// never the address in clear) followed by an HMAC-SHA256 of the id under
// Sticky.Secret (truncated to 128 bits): "<16 hex>.<22 base64url>". Values
// are fixed per backend, so they are computed once at NewPool and checked
// with a map lookup and a constant-time compare, without allocating. A
// client can only replay a value it was given, that is, name a backend it
// was already sent to; it cannot name one of its choosing.
//
// A request without a valid cookie, or whose backend is not available, is
// balanced by weighted round-robin; whenever the backend that answers is not
// the one the request's cookie named, the response gets Set-Cookie (Path=/,
// HttpOnly, SameSite=Lax, Secure when the request came over TLS, Max-Age
// when sticky.max_age is set). Retries and failovers move the session too.

// defaultStickyCookie is the cookie name when config.Sticky has none.
const defaultStickyCookie = "gatehouse_sticky"

// processStickyKey is the signing key of pools without sticky.secret: random
// per process, so affinity does not survive a restart.
var processStickyKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand.Read never fails
	return k
})

type cookieBalancer struct {
	name     string
	fallback *roundRobin
	all      []*Backend
	byID     map[string]int // stable id → index in all
	values   []string       // expected cookie value per backend
	// setCookie holds the Set-Cookie line per backend: [0] plain, [1] with
	// Secure.
	setCookie [2][]string
}

func newCookieBalancer(s *config.Sticky, backends []*Backend, rr *roundRobin) *cookieBalancer {
	name, secret, maxAge := defaultStickyCookie, processStickyKey(), 0
	if s != nil {
		if s.Cookie != "" {
			name = s.Cookie
		}
		if s.Secret != "" {
			secret = []byte(s.Secret)
		}
		if s.MaxAge > 0 {
			maxAge = int((s.MaxAge.D() + time.Second - 1) / time.Second)
		}
	}
	c := &cookieBalancer{
		name: name, fallback: rr, all: backends,
		byID:   make(map[string]int, len(backends)),
		values: make([]string, len(backends)),
	}
	for i := range c.setCookie {
		c.setCookie[i] = make([]string, len(backends))
	}
	for i, b := range backends {
		// The id in the cookie is keyed too: an unkeyed hash of the URL
		// could be brute-forced back to a private address and port.
		k := hmac.New(sha256.New, secret)
		k.Write([]byte("gatehouse sticky id " + b.id))
		id := hex.EncodeToString(k.Sum(nil)[:8])
		m := hmac.New(sha256.New, secret)
		m.Write([]byte("gatehouse sticky backend " + id))
		c.values[i] = id + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
		c.byID[id] = i
		for secure := range 2 {
			ck := &http.Cookie{
				Name: name, Value: c.values[i], Path: "/", MaxAge: maxAge,
				HttpOnly: true, Secure: secure == 1, SameSite: http.SameSiteLaxMode,
			}
			c.setCookie[secure][i] = ck.String()
		}
	}
	return c
}

func (c *cookieBalancer) Pick(r *http.Request, backends []*Backend) *Backend {
	if b := c.fromCookie(r); b != nil && b.available() && (sameSlice(backends, c.all) || contains(backends, b)) {
		return b
	}
	return c.fallback.Pick(r, backends)
}

// fromCookie is the backend the request's valid cookie names, or nil.
func (c *cookieBalancer) fromCookie(r *http.Request) *Backend {
	v := cookieValue(r.Header, c.name)
	id, _, ok := strings.Cut(v, ".")
	if !ok {
		return nil
	}
	i, ok := c.byID[id]
	if !ok || !constantTimeEqual(v, c.values[i]) {
		return nil
	}
	return c.all[i]
}

// stamp adds Set-Cookie for b to h (the response header) unless the
// request's cookie already names b.
func (c *cookieBalancer) stamp(r *http.Request, h http.Header, b *Backend) {
	if b.idx >= len(c.values) || c.all[b.idx] != b {
		return
	}
	if constantTimeEqual(cookieValue(r.Header, c.name), c.values[b.idx]) {
		return
	}
	secure := 0
	if r.TLS != nil {
		secure = 1
	}
	h["Set-Cookie"] = append(h["Set-Cookie"], c.setCookie[secure][b.idx])
}

// cookieValue finds the value of the cookie name in the Cookie header
// lines, without allocating; "" if absent. Surrounding double quotes are
// removed.
func cookieValue(h http.Header, name string) string {
	for _, line := range h["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = textproto.TrimString(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

func constantTimeEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var d byte
	for i := 0; i < len(a); i++ {
		d |= a[i] ^ b[i]
	}
	return d == 0
}

func contains(backends []*Backend, b *Backend) bool {
	for _, x := range backends {
		if x == b {
			return true
		}
	}
	return false
}
