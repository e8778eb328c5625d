package upstream

import (
	"context"
	"math"
	"net/http"
	"net/netip"
)

// Consistent hashing for balance: ip_hash and header_hash.
//
// Backends are chosen by weighted rendezvous (highest random weight)
// hashing: every backend gets a score from the hash of the key and of its
// stable id (a hash of its URL), and the available backend with the
// highest score wins. Removing one of N backends therefore moves only the
// keys that were on it (about 1/N), an unavailable backend hands its keys
// to each key's next-best backend (and gets them back when it returns),
// and there is no ring to rebuild. Scores are w / -ln(u) for u uniform in
// (0, 1), so a backend's share of keys is its share of the weight. A pick
// costs one hash of the key and a mix per backend: O(N), without locks or
// allocations.

// clientIPKey is the context key of the client address for ip_hash.
type clientIPKey struct{}

// WithClientIP returns ctx carrying ip as the request's client address,
// the key of balance: ip_hash. The proxy sets it itself (from
// Options.Trusted: TrustedProxies.ClientIP) when a pool hashes on it and the
// context has none, so a gateway that has already resolved the client
// address can hand it over this way and save the work.
func WithClientIP(ctx context.Context, ip netip.Addr) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// ClientIPFromContext returns the client address stored by WithClientIP.
func ClientIPFromContext(ctx context.Context) (netip.Addr, bool) {
	ip, ok := ctx.Value(clientIPKey{}).(netip.Addr)
	return ip, ok
}

// hashBalancer is ip_hash (header == "") or header_hash. A request without
// a key (no client address, or the header missing or empty) is balanced by
// weighted round-robin instead.
type hashBalancer struct {
	header       string // canonical header name; "" hashes the client IP
	fallback     *roundRobin
	equalWeights bool // scores compare as integers, without a logarithm
}

func (h *hashBalancer) Pick(r *http.Request, backends []*Backend) *Backend {
	key, ok := h.key(r)
	if !ok {
		return h.fallback.Pick(r, backends)
	}
	return rendezvous(backends, key, h.equalWeights)
}

// key is the hash of the request's key.
func (h *hashBalancer) key(r *http.Request) (uint64, bool) {
	if h.header != "" {
		v := r.Header[h.header]
		if len(v) == 0 || v[0] == "" {
			return 0, false
		}
		return hashString(v[0]), true
	}
	ip, ok := ClientIPFromContext(r.Context())
	if !ok {
		ip = parseHostPort(r.RemoteAddr)
	}
	if !ip.IsValid() {
		return 0, false
	}
	b := ip.As16()
	return hashBytes(b[:]), true
}

// rendezvous returns the available backend with the highest score for key.
func rendezvous(backends []*Backend, key uint64, equal bool) *Backend {
	var best *Backend
	var bestInt uint64
	var bestScore float64
	for _, b := range backends {
		if !b.available() {
			continue
		}
		x := mix64(key ^ b.hash)
		if equal {
			if best == nil || x > bestInt {
				best, bestInt = b, x
			}
			continue
		}
		u := (float64(x>>11) + 0.5) * 0x1p-53 // uniform in (0, 1)
		s := float64(b.Weight) / -math.Log(u)
		if best == nil || s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// FNV-1a, 64 bits, written out so that hashing a string does not allocate.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func hashString(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix64(h)
}

func hashBytes(p []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range p {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return mix64(h)
}

// mix64 is SplitMix64's finalizer: it spreads every input bit over the
// output, so that key ^ backend hash scores independently per backend.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
