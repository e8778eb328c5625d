package middleware

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// AuthOptions configure NewAuth. The configuration (edge/config.Auth) has
// validated them already.
type AuthOptions struct {
	// Realm names the protected space in WWW-Authenticate ("": "gatehouse").
	// It must not contain quotes, backslashes or line breaks.
	Realm string
	// Basic maps user names to bcrypt hashes ($2a$, $2b$ or $2y$).
	Basic map[string]string
	// Bearer lists the accepted bearer tokens.
	Bearer []string
}

const (
	defaultRealm = "gatehouse"
	// maxCredentials bounds the Authorization value that is decoded and
	// hashed at all; longer ones fail at once.
	maxCredentials = 4096
	// verifiedTTL is how long a successful Basic verification is remembered.
	verifiedTTL = 5 * time.Minute
	// maxVerified bounds the remembered verifications. Only correct
	// passwords are remembered, so there are about as many as users.
	maxVerified = 1024
	// bcryptWait is how long a request waits for a free bcrypt slot before
	// it is answered 429.
	bcryptWait = time.Second
)

// bcryptSlots bounds the bcrypt comparisons running at once in the whole
// process (every route's Auth shares it), to half of the CPUs: a flood of
// wrong passwords then slows logins down but leaves the other half for
// proxying.
var bcryptSlots = make(chan struct{}, max(1, runtime.NumCPU()/2))

// NewAuth returns a stage that lets a request through only with valid
// credentials: "Authorization: Basic" with a configured user and the
// password its bcrypt hash was made from, or "Authorization: Bearer" with
// one of the configured tokens. Scheme names are case-insensitive (RFC
// 9110). It is an error if a hash cannot be parsed by bcrypt or if there are
// neither users nor tokens.
//
// Without valid credentials the answer is 401 with a plain-text body and a
// WWW-Authenticate challenge per configured scheme, `Basic realm="<realm>",
// charset="UTF-8"` and/or `Bearer realm="<realm>"`; it never says which part
// was wrong. A request with more than one Authorization field fails.
//
// On success the Authorization header is removed from the request that the
// next stage gets, so credentials are never forwarded to backends (as
// Caddy's basicauth does not do, and nginx's auth_basic does). The stages
// before this one keep the client's header: the request passed on is a copy
// with its own header map.
//
// Timing and cost: bearer tokens are compared as SHA-256 digests in constant
// time against every configured token, without an early exit. A Basic
// request for an unknown user costs a bcrypt comparison too, against the
// configured hash of the highest cost (its result ignored), so user names
// cannot be told apart by timing (users with a cheaper hash can be, so give
// them all the same cost). A successful Basic verification is remembered
// for five minutes under a salted SHA-256 of the exact "user:password"
// bytes, so a client sending the same credentials again skips bcrypt; a
// failed one is never remembered. bcrypt comparisons are limited process-wide to
// half the CPUs at once: a request waits up to a second for a slot, then
// gets 429 Too Many Requests with Retry-After: 1 (remembered credentials
// and bearer tokens never wait). Like every bcrypt implementation, only the
// first 72 bytes of a password count.
//
// Put the rate limit before this stage so that guessing is limited per client.
func NewAuth(o AuthOptions) (Middleware, error) {
	a, err := newAuthenticator(o)
	if err != nil {
		return nil, err
	}
	return a.wrap, nil
}

// authenticator is NewAuth's stage. Its fields are set once; verified
// and the slots are safe for concurrent use.
type authenticator struct {
	challenges []string // WWW-Authenticate values, a read-only shared slice
	users      map[string][]byte
	dummy      []byte // the costliest hash, for unknown users
	tokens     [][sha256.Size]byte
	salt       [32]byte // for keys of verified
	verified   verifiedCache
	slots      chan struct{}
	slotWait   time.Duration
	// compare is bcrypt.CompareHashAndPassword; tests count its calls.
	compare func(hash, password []byte) error
	now     func() time.Time
}

func newAuthenticator(o AuthOptions) (*authenticator, error) {
	if len(o.Basic) == 0 && len(o.Bearer) == 0 {
		return nil, errors.New("auth needs basic users or bearer tokens")
	}
	realm := o.Realm
	if realm == "" {
		realm = defaultRealm
	}
	a := &authenticator{
		verified: verifiedCache{m: make(map[[sha256.Size]byte]time.Time), max: maxVerified, ttl: verifiedTTL},
		slots:    bcryptSlots,
		slotWait: bcryptWait,
		compare:  bcrypt.CompareHashAndPassword,
		now:      time.Now,
	}
	var errs []error
	maxCost := -1
	for _, user := range slices.Sorted(maps.Keys(o.Basic)) {
		hash := []byte(o.Basic[user])
		cost, err := bcrypt.Cost(hash)
		if err != nil {
			errs = append(errs, fmt.Errorf("basic auth user %q: bad bcrypt hash: %w", user, err))
			continue
		}
		if a.users == nil {
			a.users = make(map[string][]byte, len(o.Basic))
		}
		a.users[user] = hash
		if cost > maxCost {
			maxCost, a.dummy = cost, hash
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, tok := range o.Bearer {
		a.tokens = append(a.tokens, sha256.Sum256([]byte(tok)))
	}
	if a.users != nil {
		a.challenges = append(a.challenges, `Basic realm="`+realm+`", charset="UTF-8"`)
	}
	if a.tokens != nil {
		a.challenges = append(a.challenges, `Bearer realm="`+realm+`"`)
	}
	a.challenges = slices.Clip(a.challenges) // appending to the header copies it
	_, _ = rand.Read(a.salt[:])              // never fails (crypto/rand)
	return a, nil
}

// authResult is the outcome of checking a request's credentials.
type authResult int

const (
	authFailed authResult = iota
	authOK
	authBusy // no bcrypt slot in time
)

func (a *authenticator) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch a.check(r) {
		case authOK:
			r2 := *r
			r2.Header = r.Header.Clone()
			delete(r2.Header, "Authorization")
			next.ServeHTTP(w, &r2)
		case authBusy:
			w.Header().Set("Retry-After", "1")
			plainError(w, http.StatusTooManyRequests)
		default:
			w.Header()["Www-Authenticate"] = a.challenges
			plainError(w, http.StatusUnauthorized)
		}
	})
}

// check looks at the one Authorization field of r.
func (a *authenticator) check(r *http.Request) authResult {
	vals := r.Header["Authorization"]
	if len(vals) != 1 || len(vals[0]) > maxCredentials {
		return authFailed
	}
	scheme, creds, _ := strings.Cut(vals[0], " ")
	creds = strings.TrimLeft(creds, " ")
	switch {
	case strings.EqualFold(scheme, "Basic") && a.users != nil:
		return a.checkBasic(r.Context(), creds)
	case strings.EqualFold(scheme, "Bearer") && a.tokens != nil:
		if a.checkBearer(creds) {
			return authOK
		}
	}
	return authFailed
}

// checkBearer compares the token's digest with every configured one.
func (a *authenticator) checkBearer(token string) bool {
	sum := sha256.Sum256([]byte(token))
	match := 0
	for i := range a.tokens {
		match |= subtle.ConstantTimeCompare(sum[:], a.tokens[i][:])
	}
	return match == 1
}

func (a *authenticator) checkBasic(ctx context.Context, creds string) authResult {
	// buf is the salt followed by the decoded "user:password", hashed as a
	// whole for the key of verified.
	buf := make([]byte, len(a.salt)+base64.StdEncoding.DecodedLen(len(creds)))
	copy(buf, a.salt[:])
	n, err := base64.StdEncoding.Decode(buf[len(a.salt):], []byte(creds))
	if err != nil {
		return authFailed
	}
	buf = buf[:len(a.salt)+n]
	user, password, ok := bytes.Cut(buf[len(a.salt):], []byte{':'})
	if !ok {
		return authFailed
	}
	// The user name cannot contain ':', so the key is unambiguous.
	key := sha256.Sum256(buf)
	now := a.now()
	if a.verified.valid(key, now) {
		return authOK
	}
	hash, known := a.users[string(user)]
	if !known {
		hash = a.dummy // the same work for an unknown user; the result is ignored
	}
	if !a.acquire(ctx) {
		return authBusy
	}
	err = a.compare(hash, password)
	<-a.slots
	if !known || err != nil {
		return authFailed
	}
	a.verified.add(key, now)
	return authOK
}

// acquire takes a bcrypt slot, waiting up to slotWait (or until ctx ends).
func (a *authenticator) acquire(ctx context.Context) bool {
	select {
	case a.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(a.slotWait)
	defer t.Stop()
	select {
	case a.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// verifiedCache remembers successful verifications until their expiry, at
// most max of them. It is safe for concurrent use.
type verifiedCache struct {
	mu  sync.RWMutex
	m   map[[sha256.Size]byte]time.Time // key → expiry
	max int
	ttl time.Duration
}

func (c *verifiedCache) valid(key [sha256.Size]byte, now time.Time) bool {
	c.mu.RLock()
	exp, ok := c.m[key]
	c.mu.RUnlock()
	return ok && now.Before(exp)
}

// add remembers key until now+ttl. When full, it drops the expired entries,
// and if none are, an arbitrary one.
func (c *verifiedCache) add(key [sha256.Size]byte, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && len(c.m) >= c.max {
		for k, exp := range c.m {
			if !now.Before(exp) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[key] = now.Add(c.ttl)
}

func (c *verifiedCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
