package middleware

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const (
	testToken  = "0123456789abcdef-token-one"
	testToken2 = "fedcba9876543210-token-two"
)

// testHashes are MinCost bcrypt hashes of alice's and bob's passwords.
var testHashes = sync.OnceValue(func() map[string]string {
	m := map[string]string{}
	for user, pw := range map[string]string{"alice": "wonderland", "bob": "b:o:b 🔑"} {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			panic(err)
		}
		m[user] = string(h)
	}
	return m
})

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

// countingAuth returns an authenticator for o whose bcrypt comparisons are
// counted, with slots of its own and a long wait for them.
func countingAuth(t *testing.T, o AuthOptions) (*authenticator, *atomic.Int64) {
	t.Helper()
	a, err := newAuthenticator(o)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	a.compare = func(hash, pw []byte) error {
		calls.Add(1)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	a.slots = make(chan struct{}, 4)
	a.slotWait = time.Minute // no 429s from a slow (-race) machine; TestAuthBusy sets it
	return a, &calls
}

// seenAuth is a handler that records the Authorization header it got.
type seenAuth struct {
	mu   sync.Mutex
	vals []string
	hit  bool
}

func (s *seenAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.vals, s.hit = r.Header.Values("Authorization"), true
	s.mu.Unlock()
	_, _ = w.Write([]byte("secret"))
}

func TestAuth(t *testing.T) {
	t.Parallel()
	both := AuthOptions{Realm: "staff", Basic: testHashes(), Bearer: []string{testToken, testToken2}}
	bothChallenges := []string{`Basic realm="staff", charset="UTF-8"`, `Bearer realm="staff"`}
	tests := []struct {
		name        string
		opts        AuthOptions
		auth        []string // Authorization fields
		want        int
		bcryptCalls int64
		challenges  []string // on 401
	}{
		{"no header", both, nil, 401, 0, bothChallenges},
		{"good basic", both, []string{basic("alice", "wonderland")}, 200, 1, nil},
		{"good basic, password with colons", both, []string{basic("bob", "b:o:b 🔑")}, 200, 1, nil},
		{"wrong password", both, []string{basic("alice", "wonderlans")}, 401, 1, bothChallenges},
		{"other user's password", both, []string{basic("bob", "wonderland")}, 401, 1, bothChallenges},
		{"unknown user costs a comparison", both, []string{basic("mallory", "wonderland")}, 401, 1, bothChallenges},
		{"empty password", both, []string{basic("alice", "")}, 401, 1, bothChallenges},
		{"lowercase basic", both, []string{"basic " + base64.StdEncoding.EncodeToString([]byte("alice:wonderland"))}, 200, 1, nil},
		{"several spaces", both, []string{"Basic    " + base64.StdEncoding.EncodeToString([]byte("alice:wonderland"))}, 200, 1, nil},
		{"malformed base64", both, []string{"Basic !!!not-base64"}, 401, 0, bothChallenges},
		{"unpadded base64", both, []string{"Basic " + base64.RawStdEncoding.EncodeToString([]byte("alice:wonderland!"))}, 401, 0, bothChallenges},
		{"basic without colon", both, []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("alicewonderland"))}, 401, 0, bothChallenges},
		{"basic without credentials", both, []string{"Basic"}, 401, 0, bothChallenges},
		{"good bearer", both, []string{"Bearer " + testToken}, 200, 0, nil},
		{"second bearer", both, []string{"Bearer " + testToken2}, 200, 0, nil},
		{"uppercase BEARER", both, []string{"BEARER " + testToken}, 200, 0, nil},
		{"wrong bearer", both, []string{"Bearer " + testToken + "x"}, 401, 0, bothChallenges},
		{"bearer prefix", both, []string{"Bearer " + testToken[:16]}, 401, 0, bothChallenges},
		{"empty bearer", both, []string{"Bearer "}, 401, 0, bothChallenges},
		{"token as basic password", both, []string{basic("alice", testToken)}, 401, 1, bothChallenges},
		{"unknown scheme", both, []string{"Digest " + testToken}, 401, 0, bothChallenges},
		{"two fields", both, []string{"Bearer " + testToken, "Bearer " + testToken}, 401, 0, bothChallenges},
		{"too long", both, []string{"Bearer " + strings.Repeat("a", maxCredentials)}, 401, 0, bothChallenges},
		{"basic only: challenge", AuthOptions{Basic: testHashes()}, nil, 401, 0, []string{`Basic realm="gatehouse", charset="UTF-8"`}},
		{"basic only: bearer refused", AuthOptions{Basic: testHashes()}, []string{"Bearer " + testToken}, 401, 0, []string{`Basic realm="gatehouse", charset="UTF-8"`}},
		{"bearer only: challenge", AuthOptions{Realm: "api", Bearer: []string{testToken}}, []string{basic("alice", "wonderland")}, 401, 0, []string{`Bearer realm="api"`}},
		{"bearer only: good", AuthOptions{Realm: "api", Bearer: []string{testToken}}, []string{"Bearer " + testToken}, 200, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, calls := countingAuth(t, tc.opts)
			next := &seenAuth{}
			var outer []string // what the stage before auth sees afterwards
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				a.wrap(next).ServeHTTP(w, r)
				outer = r.Header.Values("Authorization")
			})
			req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
			req.Header["Authorization"] = tc.auth
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d", rec.Code, tc.want)
			}
			if got := calls.Load(); got != tc.bcryptCalls {
				t.Errorf("%d bcrypt comparisons, want %d", got, tc.bcryptCalls)
			}
			if !slices.Equal(outer, tc.auth) {
				t.Errorf("the outer stage sees Authorization %q, want the client's %q", outer, tc.auth)
			}
			if tc.want == http.StatusOK {
				if !next.hit || len(next.vals) != 0 {
					t.Errorf("next got Authorization %q (called: %v), want none", next.vals, next.hit)
				}
				if rec.Header()["Www-Authenticate"] != nil {
					t.Errorf("WWW-Authenticate on success: %q", rec.Header()["Www-Authenticate"])
				}
				return
			}
			if next.hit {
				t.Error("next called without valid credentials")
			}
			if got := rec.Header().Values("WWW-Authenticate"); !slices.Equal(got, tc.challenges) {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tc.challenges)
			}
			if got := rec.Body.String(); got != "401 Unauthorized\n" {
				t.Errorf("body = %q", got)
			}
		})
	}
}

func TestNewAuthErrors(t *testing.T) {
	t.Parallel()
	good := testHashes()["alice"]
	tests := []struct {
		name string
		opts AuthOptions
		want []string // substrings of the error; nil: no error
	}{
		{"nothing configured", AuthOptions{Realm: "x"}, []string{"basic users or bearer tokens"}},
		{"bad hash", AuthOptions{Basic: map[string]string{"alice": good, "eve": "$2b$10$tooshort"}}, []string{`user "eve"`}},
		{"plain text password", AuthOptions{Basic: map[string]string{"eve": "password"}}, []string{`user "eve"`}},
		{"bad cost", AuthOptions{Basic: map[string]string{"eve": "$2b$99$" + good[7:]}}, []string{`user "eve"`}},
		{"every bad user listed", AuthOptions{Basic: map[string]string{"x": "1", "y": "2"}}, []string{`user "x"`, `user "y"`}},
		{"$2y$ accepted", AuthOptions{Basic: map[string]string{"alice": "$2y$" + good[4:]}}, nil},
		{"bearer only", AuthOptions{Bearer: []string{testToken}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mw, err := NewAuth(tc.opts)
			if tc.want == nil {
				if err != nil || mw == nil {
					t.Fatalf("NewAuth: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewAuth succeeded")
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			for _, h := range tc.opts.Basic {
				if len(h) > 8 && strings.Contains(err.Error(), h) {
					t.Errorf("error %q contains a hash", err)
				}
			}
		})
	}
}

func TestAuthRemembersSuccess(t *testing.T) {
	t.Parallel()
	a, calls := countingAuth(t, AuthOptions{Basic: testHashes()})
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	a.now = func() time.Time { return *now.Load() }
	h := a.wrap(okHandler())
	send := func(auth string) int {
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	steps := []struct {
		name  string
		auth  string
		want  int
		calls int64 // total so far
	}{
		{"first success verifies", basic("alice", "wonderland"), 200, 1},
		{"second is remembered", basic("alice", "wonderland"), 200, 1},
		{"lowercase scheme, same credentials", "basic " + base64.StdEncoding.EncodeToString([]byte("alice:wonderland")), 200, 1},
		{"wrong password is verified", basic("alice", "wonderlan"), 401, 2},
		{"and never remembered", basic("alice", "wonderlan"), 401, 3},
		{"unknown user never remembered", basic("carol", "wonderland"), 401, 4},
		{"unknown user again", basic("carol", "wonderland"), 401, 5},
		{"other user verified separately", basic("bob", "b:o:b 🔑"), 200, 6},
		{"alice still remembered", basic("alice", "wonderland"), 200, 6},
	}
	for _, s := range steps {
		if got := send(s.auth); got != s.want {
			t.Errorf("%s: status %d, want %d", s.name, got, s.want)
		}
		if got := calls.Load(); got != s.calls {
			t.Errorf("%s: %d comparisons so far, want %d", s.name, got, s.calls)
		}
	}
	if got := a.verified.len(); got != 2 {
		t.Errorf("%d remembered, want 2", got)
	}
	later := start.Add(verifiedTTL)
	now.Store(&later)
	if send(basic("alice", "wonderland")) != 200 || calls.Load() != 7 {
		t.Errorf("after the TTL: %d comparisons, want 7 (verified again)", calls.Load())
	}
}

func TestVerifiedCacheBounded(t *testing.T) {
	t.Parallel()
	c := verifiedCache{m: map[[32]byte]time.Time{}, max: 3, ttl: time.Minute}
	now := time.Now()
	key := func(i byte) [32]byte { return [32]byte{i} }
	c.add(key(1), now)
	c.add(key(2), now.Add(30*time.Second))
	c.add(key(3), now.Add(30*time.Second))
	// At now+1m key 1 has expired: adding drops it, not a live one.
	t1 := now.Add(time.Minute)
	c.add(key(4), t1)
	if c.len() != 3 || c.valid(key(1), t1) || !c.valid(key(2), t1) || !c.valid(key(3), t1) || !c.valid(key(4), t1) {
		t.Errorf("after expiry eviction: len %d, valid 1..4 = %v %v %v %v", c.len(),
			c.valid(key(1), t1), c.valid(key(2), t1), c.valid(key(3), t1), c.valid(key(4), t1))
	}
	// All live: one arbitrary entry goes.
	c.add(key(5), t1)
	if c.len() != 3 || !c.valid(key(5), t1) {
		t.Errorf("after full eviction: len %d, 5 valid %v", c.len(), c.valid(key(5), t1))
	}
	// Re-adding a present key when full evicts nothing.
	c.add(key(5), t1)
	if c.len() != 3 {
		t.Errorf("re-add: len %d", c.len())
	}
}

// TestAuthBusy fills the bcrypt slots: a Basic request that is not
// remembered gets 429 after the wait; remembered ones and tokens pass.
func TestAuthBusy(t *testing.T) {
	t.Parallel()
	a, calls := countingAuth(t, AuthOptions{Basic: testHashes(), Bearer: []string{testToken}})
	a.slots = make(chan struct{}, 1)
	a.slotWait = 10 * time.Millisecond
	h := a.wrap(okHandler())
	send := func(auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := send(basic("alice", "wonderland")); rec.Code != 200 {
		t.Fatalf("warm-up: %d", rec.Code)
	}
	a.slots <- struct{}{} // every slot taken
	rec := send(basic("bob", "b:o:b 🔑"))
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" {
		t.Errorf("busy: %d Retry-After %q, want 429 and 1", rec.Code, rec.Header().Get("Retry-After"))
	}
	if rec := send(basic("mallory", "x")); rec.Code != http.StatusTooManyRequests {
		t.Errorf("busy, unknown user: %d, want 429", rec.Code)
	}
	if rec := send(basic("alice", "wonderland")); rec.Code != 200 {
		t.Errorf("busy, remembered: %d, want 200", rec.Code)
	}
	if rec := send("Bearer " + testToken); rec.Code != 200 {
		t.Errorf("busy, bearer: %d, want 200", rec.Code)
	}
	if calls.Load() != 1 {
		t.Errorf("%d comparisons, want 1", calls.Load())
	}
	// A waiting request gets the slot once it is released.
	done := make(chan int)
	a.slotWait = time.Minute
	go func() { done <- send(basic("bob", "b:o:b 🔑")).Code }()
	<-a.slots
	if code := <-done; code != 200 {
		t.Errorf("after the slot was freed: %d, want 200", code)
	}
}

// TestAuthSlotsWaitEndsWithRequest checks that a request whose context ends
// stops waiting for a slot.
func TestAuthSlotsWaitEndsWithRequest(t *testing.T) {
	t.Parallel()
	a, _ := countingAuth(t, AuthOptions{Basic: testHashes()})
	a.slots = make(chan struct{}, 1)
	a.slots <- struct{}{}
	a.slotWait = time.Hour
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.Header.Set("Authorization", basic("alice", "wonderland"))
	ctx, cancel := context.WithCancel(req.Context())
	req = req.WithContext(ctx)
	cancel()
	rec := httptest.NewRecorder()
	a.wrap(okHandler()).ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests {
		t.Errorf("status %d, want 429", rec.Code)
	}
}

// TestAuthConcurrent runs good and bad credentials at once (for -race) and
// checks that the slots are all given back.
func TestAuthConcurrent(t *testing.T) {
	t.Parallel()
	a, _ := countingAuth(t, AuthOptions{Basic: testHashes(), Bearer: []string{testToken}})
	h := a.wrap(okHandler())
	cases := []struct {
		auth string
		want int
	}{
		{basic("alice", "wonderland"), 200},
		{basic("alice", "nope"), 401},
		{basic("nobody", "nope"), 401},
		{"Bearer " + testToken, 200},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			c := cases[i%len(cases)]
			req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
			req.Header.Set("Authorization", c.auth)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.want {
				errs <- errors.New(c.auth + ": " + http.StatusText(rec.Code))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(a.slots) != 0 {
		t.Errorf("%d slots still taken", len(a.slots))
	}
}

// TestAuthDummyIsCostliest checks that unknown users are compared against
// the hash of the highest cost.
func TestAuthDummyIsCostliest(t *testing.T) {
	t.Parallel()
	cheap := testHashes()["alice"]
	dear, err := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost+1)
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAuthenticator(AuthOptions{Basic: map[string]string{"a": cheap, "b": string(dear), "c": cheap}})
	if err != nil {
		t.Fatal(err)
	}
	if string(a.dummy) != string(dear) {
		t.Errorf("dummy = %q, want the cost %d hash", a.dummy, bcrypt.MinCost+1)
	}
}

func BenchmarkAuthBearer(b *testing.B) {
	mw, err := NewAuth(AuthOptions{Bearer: []string{testToken, testToken2}})
	if err != nil {
		b.Fatal(err)
	}
	h := mw(okHandler())
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.Header.Set("Authorization", "Bearer "+testToken2)
	w := discardWriter{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
}

// BenchmarkAuthBasicRemembered measures a Basic request whose verification
// is remembered (no bcrypt).
func BenchmarkAuthBasicRemembered(b *testing.B) {
	mw, err := NewAuth(AuthOptions{Basic: testHashes()})
	if err != nil {
		b.Fatal(err)
	}
	h := mw(okHandler())
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.Header.Set("Authorization", basic("alice", "wonderland"))
	w := discardWriter{header: http.Header{}}
	h.ServeHTTP(w, req)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
}
