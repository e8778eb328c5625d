package tls

import (
	"strings"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// siteIndex maps server names to their site's TLS mode with the router's
// precedence: exact host, then one-label wildcard, then "*". Immutable.
type siteIndex struct {
	exact   map[string]config.TLSMode
	wild    map[string]config.TLSMode // "example.com" for "*.example.com"
	star    config.TLSMode            // "" when no site has hosts ["*"]
	sites   []*config.Site
	anyMode map[config.TLSMode]bool
}

func newSiteIndex(sites []*config.Site) siteIndex {
	ix := siteIndex{
		exact:   map[string]config.TLSMode{},
		wild:    map[string]config.TLSMode{},
		sites:   sites,
		anyMode: map[config.TLSMode]bool{},
	}
	for _, s := range sites {
		ix.anyMode[s.TLS.Mode] = true
		for _, h := range s.Hosts {
			switch {
			case h == "*":
				ix.star = s.TLS.Mode
			case strings.HasPrefix(h, "*."):
				ix.wild[h[2:]] = s.TLS.Mode
			default:
				ix.exact[h] = s.TLS.Mode
			}
		}
	}
	return ix
}

// modeFor is the TLS mode of the site serving name ("" when none does).
func (ix siteIndex) modeFor(name string) config.TLSMode {
	name = canonicalName(name)
	if m, ok := ix.exact[name]; ok {
		return m
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if m, ok := ix.wild[name[i+1:]]; ok {
			return m
		}
	}
	return ix.star
}

func (ix siteIndex) hasMode(m config.TLSMode) bool { return ix.anyMode[m] }

// needsInternalCA reports whether any name is served by the internal CA.
func (ix siteIndex) needsInternalCA() bool {
	_, internal := ix.managedNames()
	return len(internal) > 0 || ix.hasMode(config.TLSInternal)
}

// managedNames lists the names CertMagic manages up front: tls: auto names
// (public ones through ACME, local ones through the internal CA) and every
// tls: internal name, wildcards included (the internal CA signs them).
// "*" and on-demand names are handled at handshake time.
func (ix siteIndex) managedNames() (acmeNames, internalNames []string) {
	for _, s := range ix.sites {
		for _, h := range s.Hosts {
			if h == "*" {
				continue
			}
			switch s.TLS.Mode {
			case config.TLSInternal:
				internalNames = append(internalNames, h)
			case config.TLSAuto:
				if IsInternalName(strings.TrimPrefix(h, "*.")) {
					internalNames = append(internalNames, h)
				} else {
					acmeNames = append(acmeNames, h)
				}
			}
		}
	}
	return acmeNames, internalNames
}
