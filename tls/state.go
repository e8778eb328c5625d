package tls

import (
	"context"
	stdtls "crypto/tls"
	"fmt"
	"path/filepath"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// tlsState is an immutable snapshot of what serves the sites of one config.
type tlsState struct {
	sites    siteIndex
	acme     *certmagic.Config
	internal *certmagic.Config // == acme until a site needs the internal CA
	ca       *InternalCA       // nil until a site needs it; kept once built
	onDemand *onDemandTLS      // nil when no site uses on_demand
	// managed maps each name managed up front (see siteIndex.managedNames)
	// to the config that manages it.
	managed map[string]*certmagic.Config
}

// onDemandTLS is the on-demand CertMagic config and the policy gating it.
type onDemandTLS struct {
	cfg    *certmagic.Config
	policy *OnDemandPolicy
}

// nextState builds the state serving cfg's sites, reusing prev's internal
// CA and on-demand config (prev nil: the first state). The internal CA is
// created (or loaded from data_dir/pki) when a site first needs it and kept
// from then on; the on-demand config and policy are built when a site first
// uses on_demand and dropped when none does any more. It starts nothing.
func (m *Manager) nextState(cfg *config.Config, prev *tlsState) (*tlsState, error) {
	g := cfg.Global
	st := &tlsState{sites: newSiteIndex(cfg.Sites), acme: m.acme, internal: m.acme}
	if prev != nil {
		st.internal, st.ca, st.onDemand = prev.internal, prev.ca, prev.onDemand
	}
	if st.ca == nil && st.sites.needsInternalCA() {
		pki := filepath.Join(g.DataDir, "pki")
		if err := ensurePrivateDir(pki, m.log); err != nil {
			return nil, fmt.Errorf("internal CA: %w", err)
		}
		ca, err := LoadOrCreateCA(pki)
		if err != nil {
			return nil, fmt.Errorf("internal CA: %w", err)
		}
		st.ca, st.internal = ca, m.newCfg(ca)
	}
	if !st.sites.hasMode(config.TLSOnDemand) {
		st.onDemand = nil
	} else if st.onDemand == nil {
		od, err := m.newOnDemand(g)
		if err != nil {
			return nil, err
		}
		st.onDemand = od
	}
	acmeNames, internalNames := st.sites.managedNames()
	st.managed = make(map[string]*certmagic.Config, len(acmeNames)+len(internalNames))
	for _, n := range acmeNames {
		st.managed[n] = st.acme
	}
	for _, n := range internalNames {
		st.managed[n] = st.internal
	}
	return st, nil
}

// newOnDemand builds the on-demand config and its policy for g's settings.
// The policy matches names of on_demand sites in whatever state is current.
func (m *Manager) newOnDemand(g config.Global) (*onDemandTLS, error) {
	policy := NewOnDemandPolicy(g.OnDemand, func(name string) bool {
		return m.state.Load().sites.modeFor(name) == config.TLSOnDemand
	}, nil, m.log.With("component", "on_demand"))
	od := &onDemandTLS{cfg: m.newCfg(), policy: policy}
	var issuers []certmagic.Issuer
	if m.opts.onDemandIssuers != nil {
		issuers = m.opts.onDemandIssuers(od.cfg)
	} else {
		var err error
		if issuers, err = m.acmeIssuers(g, od.cfg); err != nil {
			return nil, err
		}
	}
	// Rate limits apply when a certificate is ordered, in the issuers;
	// the decision CertMagic also consults before loading or renewing a
	// stored certificate only checks the name and asks.
	od.cfg.Issuers = wrapOnDemandIssuers(issuers, newOnDemandGate(policy))
	od.cfg.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: func(ctx context.Context, name string) error {
		return m.decideOnDemand(ctx, od, name)
	}}
	return od, nil
}

// configForHello picks the CertMagic config for a handshake. With SNI it is
// configFor the name. Without SNI, CertMagic serves the certificate of the
// local IP address, so the config is chosen by that address, never the
// on-demand one: no one was asked about it. An address of no site (or of an
// on_demand site) gets the ACME config, which only serves cached certificates.
func (st *tlsState) configForHello(hello *stdtls.ClientHelloInfo) *certmagic.Config {
	if hello.ServerName != "" {
		return st.configFor(hello.ServerName)
	}
	ip := localIP(hello.Conn)
	if ip == "" {
		return st.acme
	}
	if cmCfg := st.configFor(ip); st.onDemand == nil || cmCfg != st.onDemand.cfg {
		return cmCfg
	}
	return st.acme
}

// configFor picks the CertMagic config for a server name.
func (st *tlsState) configFor(name string) *certmagic.Config {
	name = canonicalName(name)
	switch st.sites.modeFor(name) {
	case config.TLSInternal:
		return st.internal
	case config.TLSAuto:
		if IsInternalName(name) {
			return st.internal
		}
	case config.TLSOnDemand:
		if st.onDemand != nil {
			return st.onDemand.cfg
		}
	}
	return st.acme
}

// configForCert is the config that maintains a cached certificate: the one
// managing its name up front, else configFor its first name.
func (st *tlsState) configForCert(c certmagic.Certificate) *certmagic.Config {
	if len(c.Names) == 0 {
		return st.acme
	}
	if cmCfg := st.managed[c.Names[0]]; cmCfg != nil {
		return cmCfg
	}
	return st.configFor(c.Names[0])
}

// decideOnDemand is the on-demand config's DecisionFunc, which CertMagic
// consults before obtaining, but also before loading a stored certificate
// and before renewing one. A name of an on_demand site whose certificate is
// already in storage is allowed without asking, so that stored certificates
// are served even while the ask endpoint is down; other names are asked
// about. Rate limits are not applied here but by the issuers (see
// onDemandGate), when a certificate is really ordered.
func (m *Manager) decideOnDemand(ctx context.Context, od *onDemandTLS, name string) error {
	name, err := od.policy.Eligible(name)
	if err != nil {
		return err
	}
	if m.storedOnDemand(ctx, od, name) {
		return nil
	}
	return od.policy.Decide(ctx, name)
}

// storedOnDemand reports whether storage holds a certificate for name from
// one of the on-demand config's issuers.
func (m *Manager) storedOnDemand(ctx context.Context, od *onDemandTLS, name string) bool {
	for _, iss := range od.cfg.Issuers {
		if m.storage.Exists(ctx, certmagic.StorageKeys.SiteCert(iss.IssuerKey(), name)) {
			return true
		}
	}
	return false
}
