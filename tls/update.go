package tls

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// ErrNeedsRestart is returned (wrapped, with the reason) by [Manager.Update]
// for a change of the global TLS settings, which only a restart applies.
var ErrNeedsRestart = errors.New("this TLS change needs a restart")

// SameGlobalTLS compares the global settings the certificate manager is built
// from and returns "" when a and b agree, else which setting differs (the
// first found): global.data_dir, email, listen, http_port, https_port (the
// ACME challenge solvers use them), storage, every acme.* key, and
// on_demand.* when both a and b have a tls: on_demand site (while no site
// uses on-demand TLS its settings are not in effect, so a reload may bring
// in on_demand sites together with new on_demand settings). The order of
// acme.challenges does not matter. Neither config is modified.
//
// [Manager.Update] refuses with ErrNeedsRestart exactly when SameGlobalTLS of
// the config last applied and the new one is not "".
func SameGlobalTLS(a, b *config.Config) (reason string) {
	ga, gb := &a.Global, &b.Global
	switch {
	case ga.DataDir != gb.DataDir:
		return "global.data_dir changed"
	case ga.Email != gb.Email:
		return "global.email changed"
	case ga.Listen != gb.Listen:
		return "global.listen changed"
	case ga.HTTPPort != gb.HTTPPort:
		return "global.http_port changed"
	case ga.HTTPSPort != gb.HTTPSPort:
		return "global.https_port changed"
	case !reflect.DeepEqual(ga.Storage, gb.Storage):
		return "global.storage changed"
	}
	if r := sameACME(ga.ACME, gb.ACME); r != "" {
		return "global.acme." + r + " changed"
	}
	if usesOnDemand(a) && usesOnDemand(b) && ga.OnDemand != gb.OnDemand {
		return "global.on_demand changed"
	}
	return ""
}

// sameACME returns "" when a and b are equal, else the differing key.
func sameACME(a, b config.ACME) string {
	challenges := func(c []string) []string { return slices.Sorted(slices.Values(c)) }
	switch {
	case a.CA != b.CA:
		return "ca"
	case a.CARoot != b.CARoot:
		return "ca_root"
	case a.Staging != b.Staging:
		return "staging"
	case !slices.Equal(challenges(a.Challenges), challenges(b.Challenges)):
		return "challenges"
	case !reflect.DeepEqual(a.EAB, b.EAB):
		return "eab"
	case !reflect.DeepEqual(a.Fallback, b.Fallback):
		return "fallback"
	}
	return ""
}

func usesOnDemand(cfg *config.Config) bool {
	return slices.ContainsFunc(cfg.Sites, func(s *config.Site) bool { return s.TLS.Mode == config.TLSOnDemand })
}

// Update switches the Manager to cfg's sites without a restart. It is safe to
// call concurrently with handshakes and with itself (calls are serialised);
// it must come after a successful Start and fails after Stop.
//
// It fails, changing nothing, with an error wrapping ErrNeedsRestart when
// [SameGlobalTLS] of the config last applied and cfg is not "", and with
// another error when a manual {cert, key} pair of a new site cannot be
// loaded or the internal CA cannot be created. Pairs that were already
// loaded are not read again (the file watcher follows them).
//
// Otherwise, in this order:
//   - the certificates of new manual pairs are loaded;
//   - the site index is swapped in with one atomic store (handshakes read it
//     without locks); from then on a server name of no site gets no
//     certificate;
//   - names no longer managed up front (or now managed by another issuer,
//     e.g. tls: internal became tls: auto) are removed from the certificate
//     cache, so they are neither renewed nor served, and an initial obtain
//     still in flight for them is cancelled; so are the on-demand
//     certificates of names no longer on_demand; manual pairs no longer
//     configured are dropped and no longer watched;
//   - new names are managed in the background (ManageAsync: a stored
//     certificate is loaded, a missing one obtained). Update does not wait
//     for a CA.
//
// The internal CA is created (or loaded from data_dir/pki) when a site first
// needs it, and kept afterwards; the on-demand config and policy are built
// when an on_demand site first appears (with cfg's on_demand settings) and
// dropped, with their rate-limit state, when none is left. ctx bounds the
// loading of manual certificates only; background management runs for the
// Manager's lifetime.
func (m *Manager) Update(ctx context.Context, cfg *config.Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.ctx == nil || m.ctx.Err() != nil {
		return errNotRunning
	}
	if reason := SameGlobalTLS(m.cfg, cfg); reason != "" {
		return fmt.Errorf("%w: %s", ErrNeedsRestart, reason)
	}
	old := m.state.Load()
	next, err := m.nextState(cfg, old)
	if err != nil {
		return fmt.Errorf("updating TLS sites: %w", err)
	}
	var removed []string
	if err := m.manual.apply(ctx, cfg.Sites, func() { removed = m.swap(old, next) }); err != nil {
		return fmt.Errorf("updating TLS sites: %w", err)
	}
	m.cfg = cfg
	var added []string
	for name, cmCfg := range next.managed {
		if old.managed[name] != cmCfg {
			added = append(added, name)
		}
	}
	slices.Sort(added)
	m.manage(next, added)
	m.log.Info("TLS sites updated", "managing", added, "unmanaged", removed)
	return nil
}

// swap publishes next and removes from the cache what old managed and next
// does not, returning the names removed. It holds m.track, so that a
// certificate cached meanwhile is judged against old or next consistently
// (see cachedManaged). Callers hold m.mu.
func (m *Manager) swap(old, next *tlsState) (removed []string) {
	m.track.Lock()
	defer m.track.Unlock()
	m.state.Store(next)
	var drop []certmagic.SubjectIssuer
	for _, name := range slices.Sorted(maps.Keys(old.managed)) {
		cmCfg := old.managed[name]
		if next.managed[name] == cmCfg {
			continue
		}
		if cancel := m.managing[name]; cancel != nil {
			cancel()
			delete(m.managing, name)
		}
		drop = append(drop, subjects(name, cmCfg)...)
		removed = append(removed, name)
	}
	for name, cmCfg := range m.onDemandNames {
		if !next.wantsOnDemand(cmCfg, name) {
			delete(m.onDemandNames, name)
			drop = append(drop, subjects(name, cmCfg)...)
			removed = append(removed, name)
		}
	}
	m.cache.RemoveManaged(drop)
	return removed
}

// subjects names the managed certificates of name issued by cmCfg's issuers.
func subjects(name string, cmCfg *certmagic.Config) []certmagic.SubjectIssuer {
	out := make([]certmagic.SubjectIssuer, 0, len(cmCfg.Issuers))
	for _, iss := range cmCfg.Issuers {
		out = append(out, certmagic.SubjectIssuer{Subject: name, IssuerKey: iss.IssuerKey()})
	}
	return out
}

// wantsOnDemand reports whether st serves name with on-demand certificates
// from cmCfg.
func (st *tlsState) wantsOnDemand(cmCfg *certmagic.Config, name string) bool {
	return st.onDemand != nil && st.onDemand.cfg == cmCfg && st.sites.modeFor(name) == config.TLSOnDemand
}

// cachedManaged runs after cmCfg put a managed certificate for sans in the
// cache. An on-demand certificate is remembered (Update drops it when its
// name stops being on_demand; Expiries lists it). A certificate that the
// current state does not want from cmCfg, typically one whose obtain was in
// flight when Update removed its name, is removed from the cache again.
func (m *Manager) cachedManaged(cmCfg *certmagic.Config, sans []string) {
	if len(sans) == 0 {
		return
	}
	m.track.Lock()
	defer m.track.Unlock()
	st := m.state.Load()
	wanted := false
	for _, name := range sans {
		switch {
		case st.wantsOnDemand(cmCfg, name):
			m.onDemandNames[name] = cmCfg
			wanted = true
		case st.managed[name] == cmCfg:
			wanted = true
		}
	}
	if wanted {
		return
	}
	var drop []certmagic.SubjectIssuer
	for _, name := range sans {
		drop = append(drop, subjects(name, cmCfg)...)
	}
	m.cache.RemoveManaged(drop)
	m.log.Info("dropped a certificate obtained for names no longer configured", "names", sans)
}

// CertExpiry is when the certificate served for a name expires.
type CertExpiry struct {
	Name     string
	NotAfter time.Time
}

// Expiries lists the certificates in service, one entry per name, sorted by
// name: names managed up front (tls: auto, internal) and on-demand names
// whose certificate is in the cache, and the names of manual certificates.
// A name whose certificate is still being obtained is not listed; when a
// name has several certificates (during a renewal) the latest NotAfter is
// reported. Safe for concurrent use; meant for a metrics gauge.
func (m *Manager) Expiries() []CertExpiry {
	latest := map[string]time.Time{}
	add := func(name string, notAfter time.Time) {
		if notAfter.After(latest[name]) {
			latest[name] = notAfter
		}
	}
	// lookup adds name's cached certificates and reports whether any is.
	lookup := func(name string) bool {
		found := false
		for _, c := range m.cache.AllMatchingCertificates(name) {
			if c.Leaf != nil && slices.ContainsFunc(c.Names, func(n string) bool { return strings.EqualFold(n, name) }) {
				add(name, c.Leaf.NotAfter)
				found = true
			}
		}
		return found
	}
	for name := range m.state.Load().managed {
		lookup(name)
	}
	m.track.Lock()
	for name := range m.onDemandNames {
		// Under track: a certificate cached after this lookup is
		// remembered again by cachedManaged, which waits for track.
		if !lookup(name) {
			delete(m.onDemandNames, name)
		}
	}
	m.track.Unlock()
	m.manual.expiries(add)

	out := make([]CertExpiry, 0, len(latest))
	for _, name := range slices.Sorted(maps.Keys(latest)) {
		out = append(out, CertExpiry{Name: name, NotAfter: latest[name]})
	}
	return out
}
