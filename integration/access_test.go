package integration

// Per-route access control: rate_limit (a token bucket per client IP, with
// trusted_proxies deciding who the client is) and auth (Basic users with
// bcrypt hashes, Bearer tokens), and that the admin API's /config never
// shows their secrets.

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestAccessRateLimit checks a route limited to 5 requests per minute per
// client: the 6th request of a client gets 429 with a Retry-After of at
// least a second, while other clients (told apart by X-Forwarded-For from
// the trusted proxy 127.0.0.1, and the proxy itself) keep their own
// buckets, other routes are not limited, and a reload that keeps the route
// keeps its buckets.
func TestAccessRateLimit(t *testing.T) {
	t.Parallel()
	site := func(version string) string {
		return fmt.Sprintf(`
sites:
  - hosts: [rl.test]
    tls: off
    routes:
      - path: /limited
        respond: {status: 200, body: "limited\n"}
        rate_limit: {requests: 5, per: 1m}
      - path: /free
        respond: {status: 200, body: "%s\n"}
`, version)
	}
	g := startGateway(t, GatewayConfig{Global: "trusted_proxies: [127.0.0.1]", Body: site("v1")})
	global := configGlobal(t, g.ConfigPath)
	get := func(path, clientIP string) Response {
		t.Helper()
		h := http.Header{}
		if clientIP != "" {
			h.Set("X-Forwarded-For", clientIP)
		}
		return g.Do(t, "rl.test", http.MethodGet, path, h, nil)
	}
	exhaust := func(clientIP, who string) {
		t.Helper()
		for i := 1; i <= 5; i++ {
			if r := get("/limited", clientIP); r.Status != http.StatusOK || r.Body != "limited\n" {
				t.Fatalf("%s: request %d of 5 = %d %q, want 200", who, i, r.Status, r.Body)
			}
		}
		assertLimited(t, get("/limited", clientIP), who+": request 6")
	}

	const a, b = "203.0.113.1", "203.0.113.2"
	exhaust(a, "client A")
	exhaust(b, "client B (after A ran out)")
	assertLimited(t, get("/limited", a), "client A again")
	exhaust("", "the proxy 127.0.0.1 itself")
	// IPv6 clients are keyed by their /64: another address of the same
	// /64 shares the bucket, another /64 has its own.
	exhaust("2001:db8:1:1::1", "IPv6 client 2001:db8:1:1::1")
	assertLimited(t, get("/limited", "2001:db8:1:1::ffff"), "another address of the same /64")
	exhaust("2001:db8:1:2::1", "IPv6 client of another /64")
	for i := range 10 {
		if r := get("/free", a); r.Status != http.StatusOK {
			t.Fatalf("client A on the unlimited route, request %d = %d %q, want 200", i+1, r.Status, r.Body)
		}
	}

	// A reload that leaves the route as it was keeps its buckets: A is still
	// limited, and a new client still gets a full bucket.
	writeConfig(t, g.ConfigPath, global, site("v2"))
	g.Signal(syscall.SIGHUP)
	waitBody(t, g, 10*time.Second, "rl.test", "/free", "v2\n")
	assertLimited(t, get("/limited", a), "client A after a reload that kept the route")
	exhaust("203.0.113.3", "client C (after the reload)")
}

// assertLimited checks a 429 answer with Retry-After in whole seconds, at
// least 1 and at most the minute the bucket needs to refill.
func assertLimited(t *testing.T, r Response, what string) {
	t.Helper()
	if r.Status != http.StatusTooManyRequests {
		t.Errorf("%s = %d %q, want 429", what, r.Status, r.Body)
		return
	}
	assertErrorBody(t, r, http.StatusTooManyRequests)
	ra := r.Header.Get("Retry-After")
	n, err := strconv.Atoi(ra)
	if err != nil || n < 1 || n > 60 {
		t.Errorf("%s: Retry-After = %q, want whole seconds between 1 and 60", what, ra)
	}
}

// TestAccessAuth protects a proxied route with a Basic user (its bcrypt
// hash made here) and a Bearer token taken from the environment through
// ${VAR}: without valid credentials the answer is 401 with a challenge per
// scheme; valid ones pass, and the backend never sees the Authorization
// header; GET /config on the admin API shows neither the hash nor the
// token, and neither do the logs.
func TestAccessAuth(t *testing.T) {
	t.Parallel()
	const (
		user     = "alice"
		password = "correct horse battery staple"
		token    = "tok-5f1e8c2a9b7d4e63a0c1"
		realm    = "staff area"
	)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	be := newBackend(t, echoHandler("private"))
	ag := startAdminGatewayCfg(t, GatewayConfig{
		Env: []string{"GATEHOUSE_TEST_BEARER=" + token},
		Body: fmt.Sprintf(`
sites:
  - hosts: [auth.test]
    tls: off
    routes:
      - path: /private
        upstream: [%s]
        auth:
          realm: %q
          basic: {%s: %q}
          bearer: ["${GATEHOUSE_TEST_BEARER}"]
      - path: /
        respond: {status: 200, body: "public\n"}
`, be.URL, realm, user, hash),
	})
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	get := func(authz ...string) Response {
		t.Helper()
		h := http.Header{}
		for _, v := range authz {
			h.Add("Authorization", v)
		}
		return ag.Do(t, "auth.test", http.MethodGet, "/private/x", h, nil)
	}
	wantChallenges := []string{`Basic realm="` + realm + `", charset="UTF-8"`, `Bearer realm="` + realm + `"`}
	denied := func(r Response, what string) {
		t.Helper()
		if r.Status != http.StatusUnauthorized {
			t.Errorf("%s: %d %q, want 401", what, r.Status, r.Body)
			return
		}
		assertErrorBody(t, r, http.StatusUnauthorized, password, token, string(hash))
		got := r.Header.Values("WWW-Authenticate")
		for _, w := range wantChallenges {
			if !containsString(got, w) {
				t.Errorf("%s: WWW-Authenticate = %q, want a challenge %q", what, got, w)
			}
		}
		if len(got) != len(wantChallenges) {
			t.Errorf("%s: WWW-Authenticate = %q, want exactly %q", what, got, wantChallenges)
		}
	}
	passed := func(r Response, what string) {
		t.Helper()
		if r.Status != http.StatusOK {
			t.Errorf("%s: %d %q, want 200 from the backend", what, r.Status, r.Body)
			return
		}
		e := decodeEcho(t, r)
		if v, ok := e.Header["Authorization"]; ok {
			t.Errorf("%s: the backend received Authorization %q; credentials must not be forwarded", what, v)
		}
		if e.Path != "/private/x" {
			t.Errorf("%s: the backend got path %q", what, e.Path)
		}
	}

	denied(get(), "no credentials")
	denied(get(basic(user, "wrong password")), "a wrong password")
	denied(get(basic("mallory", password)), "an unknown user")
	denied(get("Bearer not-the-token"), "a wrong bearer token")
	denied(get("Bearer "+token[:len(token)-1]), "a truncated bearer token")
	denied(get("Basic "+token), "the token sent as Basic")
	denied(get("Bearer "+token, "Bearer "+token), "two Authorization fields")
	passed(get(basic(user, password)), "good Basic credentials")
	passed(get(basic(user, password)), "good Basic credentials again (remembered)")
	passed(get("Bearer "+token), "the good bearer token")
	passed(get("bearer "+token), "the good bearer token, scheme in lower case")
	if r := ag.Get(t, "auth.test", "/"); r.Status != http.StatusOK || r.Body != "public\n" {
		t.Errorf("the unprotected route: GET / = %d %q, want 200", r.Status, r.Body)
	}

	// GET /config shows the route's auth with the secrets redacted.
	r := ag.Admin(t, http.MethodGet, "/config")
	if r.Status != http.StatusOK {
		t.Fatalf("GET /config = %d %q, want 200", r.Status, r.Body)
	}
	for _, secret := range []string{token, string(hash), string(hash[7:]), password} {
		if strings.Contains(r.Body, secret) {
			t.Errorf("GET /config shows a secret (%.12s...):\n%s", secret, r.Body)
		}
	}
	for _, want := range []string{"[redacted]", user, realm} {
		if !strings.Contains(r.Body, want) {
			t.Errorf("GET /config does not show %q:\n%s", want, r.Body)
		}
	}
	for _, secret := range []string{token, string(hash), password} {
		if strings.Contains(ag.Stderr.String()+ag.Stdout.String(), secret) {
			t.Errorf("the gateway's output contains a secret (%.12s...)", secret)
		}
	}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestAccessRateLimitBeforeAuth checks the fixed order rate limit → auth:
// failed logins use up the client's bucket, so once it is empty even good
// credentials get 429 (password guessing is limited per client), while
// another client still gets in.
func TestAccessRateLimitBeforeAuth(t *testing.T) {
	t.Parallel()
	const token = "guarded-token-81f3"
	g := startGateway(t, GatewayConfig{
		Global: "trusted_proxies: [127.0.0.1]",
		Env:    []string{"GATEHOUSE_TEST_GUARD=" + token},
		Body: `
sites:
  - hosts: [guard.test]
    tls: off
    routes:
      - path: /
        respond: {status: 200, body: "in\n"}
        rate_limit: {requests: 3, per: 1m}
        auth:
          bearer: ["${GATEHOUSE_TEST_GUARD}"]
`,
	})
	get := func(clientIP, tok string) Response {
		t.Helper()
		h := http.Header{"X-Forwarded-For": {clientIP}, "Authorization": {"Bearer " + tok}}
		return g.Do(t, "guard.test", http.MethodGet, "/", h, nil)
	}
	for i := range 3 {
		if r := get("198.51.100.7", fmt.Sprintf("guess-%d", i)); r.Status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d = %d %q, want 401", i+1, r.Status, r.Body)
		}
	}
	assertLimited(t, get("198.51.100.7", token), "the right token after 3 wrong guesses")
	if r := get("198.51.100.8", token); r.Status != http.StatusOK || r.Body != "in\n" {
		t.Errorf("another client with the right token = %d %q, want 200", r.Status, r.Body)
	}
}
