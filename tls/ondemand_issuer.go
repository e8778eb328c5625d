package tls

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// onDemandGate admits the issuance attempts of the on-demand config. It is
// shared by the wrappers of all that config's issuers (the ACME CA and its
// fallback), so that one attempt, which CertMagic makes by trying each issuer
// in turn, is reserved once: the fallback must not be refused by the
// per-name spacing its predecessor's reservation just started.
type onDemandGate struct {
	policy *OnDemandPolicy
	// passes remembers, per name, the attempt that holds its reservation;
	// guarded by policy.mu (bounded like the policy's other maps).
	passes *expiringMap[attemptID]
}

// attemptID identifies one pass of CertMagic over the issuer list:
// CertMagic's retry loop puts a pointer to its attempt counter in the
// context (certmagic.AttemptsCtxKey) and increments it between passes.
type attemptID struct {
	counter *int
	n       int
}

func newOnDemandGate(p *OnDemandPolicy) *onDemandGate {
	return &onDemandGate{policy: p, passes: newExpiringMap[attemptID](maxOnDemandEntries)}
}

// admit lets an issuance for csr through, or says why not. Every name of the
// CSR must pass the policy's Decide (name check and ask endpoint, normally
// a cached answer: the handshake just asked; but a renewal of a stored
// certificate was allowed without asking, so the ask endpoint keeps the
// last word on issuance), then Reserve (spacing and global bucket). An
// attempt already admitted for another issuer of the same pass goes through
// at once.
func (g *onDemandGate) admit(ctx context.Context, csr *x509.CertificateRequest) error {
	if csr == nil {
		return errors.New("on-demand issuance: no certificate request")
	}
	names := append([]string(nil), csr.DNSNames...)
	for _, ip := range csr.IPAddresses { // Decide refuses them; never unchecked
		names = append(names, ip.String())
	}
	if len(names) == 0 || len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return errors.New("on-demand issuance: certificate request must name DNS names only")
	}

	id, hasID := attemptOf(ctx)
	if hasID && g.samePass(names, id) {
		return nil
	}
	for i, name := range names {
		if err := g.policy.Decide(ctx, name); err != nil {
			return err
		}
		names[i] = canonicalName(name)
	}
	if err := g.policy.Reserve(names...); err != nil {
		return err
	}
	if hasID {
		p := g.policy
		p.mu.Lock()
		now := p.now()
		for _, name := range names {
			g.passes.set(name, id, now.Add(p.interval), now)
		}
		p.mu.Unlock()
	}
	return nil
}

// samePass reports whether every name was reserved by attempt id.
func (g *onDemandGate) samePass(names []string, id attemptID) bool {
	p := g.policy
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, name := range names {
		if got, ok := g.passes.get(canonicalName(name), now); !ok || got != id {
			return false
		}
	}
	return true
}

func attemptOf(ctx context.Context) (attemptID, bool) {
	counter, ok := ctx.Value(certmagic.AttemptsCtxKey).(*int)
	if !ok || counter == nil {
		return attemptID{}, false
	}
	return attemptID{counter: counter, n: *counter}, true
}

// onDemandIssuer wraps an issuer of the on-demand config so that the
// policy's issuance limits apply when a certificate is really ordered (a
// new one or a renewal) and never when a stored one is loaded or served.
// IssuerKey is the inner issuer's, so storage paths do not change.
type onDemandIssuer struct {
	inner certmagic.Issuer
	gate  *onDemandGate
}

var _ certmagic.Issuer = (*onDemandIssuer)(nil)

// IssuerKey returns the inner issuer's key unchanged.
func (i *onDemandIssuer) IssuerKey() string { return i.inner.IssuerKey() }

// Issue admits the attempt through the gate, then lets the inner issuer
// issue. A refusal is final for this attempt (certmagic.ErrNoRetry): the next
// handshake that needs the certificate tries again.
func (i *onDemandIssuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := i.gate.admit(ctx, csr); err != nil {
		return nil, certmagic.ErrNoRetry{Err: fmt.Errorf("on-demand issuance refused: %w", err)}
	}
	return i.inner.Issue(ctx, csr)
}

// onDemandPreCheckIssuer is an onDemandIssuer whose inner issuer is a
// certmagic.PreChecker.
type onDemandPreCheckIssuer struct {
	*onDemandIssuer
	pre certmagic.PreChecker
}

func (i *onDemandPreCheckIssuer) PreCheck(ctx context.Context, names []string, interactive bool) error {
	return i.pre.PreCheck(ctx, names, interactive)
}

// onDemandACMEIssuer wraps a *certmagic.ACMEIssuer and forwards the optional
// interfaces CertMagic looks for on it: PreChecker, Revoker and
// RenewalInfoGetter (ARI). CertMagic's own *ACMEIssuer type assertion (to
// mark a renewal as replacing a certificate of the same CA) cannot see
// through the wrapper; renewals are then ordinary orders.
type onDemandACMEIssuer struct {
	*onDemandIssuer
	am *certmagic.ACMEIssuer
}

var (
	_ certmagic.PreChecker        = (*onDemandACMEIssuer)(nil)
	_ certmagic.Revoker           = (*onDemandACMEIssuer)(nil)
	_ certmagic.RenewalInfoGetter = (*onDemandACMEIssuer)(nil)
)

func (i *onDemandACMEIssuer) PreCheck(ctx context.Context, names []string, interactive bool) error {
	return i.am.PreCheck(ctx, names, interactive)
}

func (i *onDemandACMEIssuer) Revoke(ctx context.Context, cert certmagic.CertificateResource, reason int) error {
	return i.am.Revoke(ctx, cert, reason)
}

func (i *onDemandACMEIssuer) GetRenewalInfo(ctx context.Context, cert certmagic.Certificate) (acme.RenewalInfo, error) {
	return i.am.GetRenewalInfo(ctx, cert)
}

// wrapOnDemandIssuers wraps each issuer with the gate, keeping the optional
// interfaces CertMagic uses: all of *certmagic.ACMEIssuer's, or PreChecker
// for other issuers that implement it.
func wrapOnDemandIssuers(issuers []certmagic.Issuer, gate *onDemandGate) []certmagic.Issuer {
	out := make([]certmagic.Issuer, len(issuers))
	for i, inner := range issuers {
		base := &onDemandIssuer{inner: inner, gate: gate}
		switch in := inner.(type) {
		case *certmagic.ACMEIssuer:
			out[i] = &onDemandACMEIssuer{onDemandIssuer: base, am: in}
		case certmagic.PreChecker:
			out[i] = &onDemandPreCheckIssuer{onDemandIssuer: base, pre: in}
		default:
			out[i] = base
		}
	}
	return out
}
