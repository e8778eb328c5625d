package upstream

import (
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func stickyPool(t testing.TB, s *config.Sticky, urls ...string) *Pool {
	t.Helper()
	return newTestPool(t, func(u *config.Upstream) {
		u.Balance = "cookie"
		u.Sticky = s
	}, urls...)
}

// TestStickyCookie: a client with a cookie jar stays on the backend of its
// first answer, moves only when that backend goes down (getting a new
// cookie), and a tampered cookie is ignored.
func TestStickyCookie(t *testing.T) {
	t.Parallel()
	bs := []*testBackend{newTestBackend(t, "a"), newTestBackend(t, "b"), newTestBackend(t, "c")}
	pool := stickyPool(t, &config.Sticky{Cookie: "sticky", Secret: "0123456789abcdef0123"}, backendURLs(bs...)...)
	front := serveProxy(t, NewProxy(pool, quietOptions()))
	frontURL, _ := url.Parse(front.URL)

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Transport: front.Client().Transport, Jar: jar}
	_, home, h := get(t, c, front.URL+"/")
	if len(h.Values("Set-Cookie")) != 1 {
		t.Fatalf("first response Set-Cookie %q, want one", h.Values("Set-Cookie"))
	}
	ck := jar.Cookies(frontURL)
	if len(ck) != 1 || ck[0].Name != "sticky" {
		t.Fatalf("jar holds %v", ck)
	}
	for _, b := range pool.Backends {
		if strings.Contains(ck[0].Value, b.URL.Host) || strings.Contains(ck[0].Value, b.URL.Port()) {
			t.Errorf("cookie %q shows the backend address", ck[0].Value)
		}
	}
	for i := range 10 {
		_, body, h := get(t, c, front.URL+"/")
		if body != home {
			t.Fatalf("request %d went to %s, the session is on %s", i, body, home)
		}
		if sc := h.Values("Set-Cookie"); len(sc) != 0 {
			t.Fatalf("request %d with a valid cookie got Set-Cookie %q", i, sc)
		}
	}

	// The home backend goes down: the session moves and gets a new cookie,
	// then stays on its new backend; coming back does not move it again.
	var homeB *Backend
	for i, b := range bs {
		if b.name == home {
			homeB = pool.Backends[i]
		}
	}
	homeB.SetHealthy(false)
	_, moved, h := get(t, c, front.URL+"/")
	if moved == home || len(h.Values("Set-Cookie")) != 1 {
		t.Fatalf("with %s down: served by %s, Set-Cookie %q", home, moved, h.Values("Set-Cookie"))
	}
	homeB.SetHealthy(true)
	for i := range 10 {
		if _, body, _ := get(t, c, front.URL+"/"); body != moved {
			t.Fatalf("request %d after the move went to %s, want %s", i, body, moved)
		}
	}

	// Tampered cookies are ignored: balanced afresh, with a new cookie.
	val := jar.Cookies(frontURL)[0].Value
	id, mac, _ := strings.Cut(val, ".")
	flip := func(s string) string {
		if s[0] == 'A' {
			return "B" + s[1:]
		}
		return "A" + s[1:]
	}
	other := pool.Backends[0]
	if other.id == id {
		other = pool.Backends[1]
	}
	for _, bad := range []string{
		id + "." + flip(mac), // wrong MAC
		other.id + "." + mac, // another backend's id with this MAC
		other.id,             // no MAC
		"garbage",            // nonsense
		val + "x",            // trailing junk
		strings.ToUpper(id) + "." + mac,
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Cookie", "sticky="+bad)
		if b := pool.sticky.fromCookie(r); b != nil {
			t.Errorf("cookie %q accepted as %v", bad, b)
		}
		code, _, h, err := fetch(front.Client(), front.URL+"/", "Cookie", "sticky="+bad)
		if err != nil || code != http.StatusOK || len(h.Values("Set-Cookie")) != 1 {
			t.Errorf("tampered cookie %q: status %d, Set-Cookie %q, err %v", bad, code, h.Values("Set-Cookie"), err)
		}
	}
	waitInflightZero(t, pool)
}

func TestStickyCookieAttributes(t *testing.T) {
	t.Parallel()
	backend := newTestBackend(t, "a")
	tests := []struct {
		name   string
		sticky *config.Sticky
		target string
		want   []string
		absent []string
	}{
		{"defaults over http", nil, "http://example.com/",
			[]string{"gatehouse_sticky=", "Path=/", "HttpOnly", "SameSite=Lax"}, []string{"Secure", "Max-Age"}},
		{"tls and max age", &config.Sticky{Cookie: "aff", MaxAge: config.Duration(90 * time.Minute)}, "https://example.com/",
			[]string{"aff=", "Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=5400"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := stickyPool(t, tc.sticky, backend.URL)
			rec := httptest.NewRecorder()
			NewProxy(pool, quietOptions()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.target, nil))
			sc := rec.Header().Get("Set-Cookie")
			for _, w := range tc.want {
				if !strings.Contains(sc, w) {
					t.Errorf("Set-Cookie %q lacks %q", sc, w)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(sc, a) {
					t.Errorf("Set-Cookie %q has %q", sc, a)
				}
			}
		})
	}
}

// TestStickySecret: without a secret a per-process key signs; with one,
// pools built apart (a restart, another instance) accept each other's
// cookies, and a different secret does not.
func TestStickySecret(t *testing.T) {
	t.Parallel()
	urls := []string{"http://10.0.0.1:80", "http://10.0.0.2:80"}
	a := stickyPool(t, &config.Sticky{Secret: "shared-secret-0123456789"}, urls...)
	b := stickyPool(t, &config.Sticky{Secret: "shared-secret-0123456789"}, urls...)
	other := stickyPool(t, &config.Sticky{Secret: "another-secret-012345678"}, urls...)
	random1, random2 := stickyPool(t, nil, urls...), stickyPool(t, nil, urls...)
	if a.sticky.values[1] != b.sticky.values[1] {
		t.Error("same secret, different cookie values")
	}
	if a.sticky.values[1] == other.sticky.values[1] {
		t.Error("different secrets, same cookie value")
	}
	if random1.sticky.values[1] != random2.sticky.values[1] {
		t.Error("the per-process key differs between pools of one process")
	}
	if random1.sticky.values[1] == a.sticky.values[1] {
		t.Error("the per-process key equals a configured secret")
	}
	// The id part is keyed: it differs between secrets and is not the
	// unkeyed hash of the backend URL, which could be brute-forced back to
	// a private address.
	idA, _, _ := strings.Cut(a.sticky.values[1], ".")
	idOther, _, _ := strings.Cut(other.sticky.values[1], ".")
	if idA == idOther || idA == a.Backends[1].id {
		t.Errorf("cookie id %q is not keyed (other secret %q, unkeyed %q)", idA, idOther, a.Backends[1].id)
	}
}

func TestCookieValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lines []string
		want  string
	}{
		{nil, ""},
		{[]string{"a=1; s=xyz; b=2"}, "xyz"},
		{[]string{"a=1", "s=\"q\""}, "q"},
		{[]string{"ss=no; s"}, ""},
		{[]string{"  s=sp  ;x=1"}, "sp"},
	}
	for _, tc := range tests {
		if got := cookieValue(http.Header{"Cookie": tc.lines}, "s"); got != tc.want {
			t.Errorf("cookieValue(%q) = %q, want %q", tc.lines, got, tc.want)
		}
	}
}
