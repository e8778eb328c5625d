package tls

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// manualPollInterval is how often certificate files are checked for changes.
var manualPollInterval = 5 * time.Second

// manualCerts serves tls: {cert, key} files and swaps in new contents when
// the files change on disk. A bad new file is logged and the old certificate
// keeps serving. mu guards entries and every entry's fields: watch's
// goroutine and apply (Start, Update) take it.
type manualCerts struct {
	cfg     *certmagic.Config
	cache   *certmagic.Cache
	log     *slog.Logger
	mu      sync.Mutex
	entries []*manualEntry // one per distinct {cert, key} pair
}

type manualEntry struct {
	cert, key string
	stamp     string // modification times and sizes of both files
	hash      string // CertMagic cache key of the loaded certificate
	names     []string
	notAfter  time.Time
}

func newManualCerts(cfg *certmagic.Config, cache *certmagic.Cache, log *slog.Logger) *manualCerts {
	return &manualCerts{cfg: cfg, cache: cache, log: log}
}

// apply makes the cached manual certificates those of sites. Pairs already
// loaded are kept as they are (the watcher follows their files); new pairs
// are read and cached, and an unreadable or invalid one is an error that
// leaves everything as it was (what this call cached is dropped again).
// Once all are loaded, swap (if not nil) runs, still under mu; then the
// certificates of pairs no longer configured are dropped from the cache and
// their files are no longer watched.
func (mc *manualCerts) apply(ctx context.Context, sites []*config.Site, swap func()) error {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	type pair struct{ cert, key string }
	current := make(map[pair]*manualEntry, len(mc.entries))
	for _, e := range mc.entries {
		current[pair{e.cert, e.key}] = e
	}
	seen := map[pair]bool{}
	var next, added []*manualEntry
	for _, s := range sites {
		p := pair{s.TLS.Cert, s.TLS.Key}
		if s.TLS.Mode != config.TLSManual || seen[p] {
			continue
		}
		seen[p] = true
		if e := current[p]; e != nil {
			next = append(next, e)
			continue
		}
		e := &manualEntry{cert: p.cert, key: p.key}
		if err := mc.reload(ctx, e); err != nil {
			for _, a := range added {
				if !usesHash(mc.entries, a.hash) {
					mc.cache.Remove([]string{a.hash})
				}
			}
			return err
		}
		added = append(added, e)
		next = append(next, e)
	}
	if swap != nil {
		swap()
	}
	old := mc.entries
	mc.entries = next
	for _, e := range old {
		if !seen[pair{e.cert, e.key}] && !usesHash(next, e.hash) {
			mc.cache.Remove([]string{e.hash})
		}
	}
	return nil
}

// usesHash reports whether one of entries holds the certificate cached
// under hash (two pairs of files may hold the same certificate).
func usesHash(entries []*manualEntry, hash string) bool {
	return slices.ContainsFunc(entries, func(e *manualEntry) bool { return e.hash == hash })
}

// reload reads e's files and, when they hold a new certificate, caches it
// and drops the previous one (unless another entry serves it too).
// Callers hold mc.mu.
func (mc *manualCerts) reload(ctx context.Context, e *manualEntry) error {
	stamp, err := fileStamp(e.cert, e.key)
	if err != nil {
		return err
	}
	certPEM, err := os.ReadFile(e.cert)
	if err != nil {
		return fmt.Errorf("reading certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(e.key)
	if err != nil {
		return fmt.Errorf("reading key: %w", err)
	}
	hash, err := mc.cfg.CacheUnmanagedCertificatePEMBytes(ctx, certPEM, keyPEM, nil)
	if err != nil {
		return fmt.Errorf("loading certificate %s with key %s: %w", e.cert, e.key, err)
	}
	prev := e.hash
	e.hash, e.stamp = hash, stamp
	e.names, e.notAfter = leafInfo(certPEM)
	if prev != "" && prev != hash && !usesHash(mc.entries, prev) {
		mc.cache.Remove([]string{prev})
	}
	return nil
}

// leafInfo is the names and expiry of the first certificate in certPEM
// (which CertMagic has already accepted).
func leafInfo(certPEM []byte) ([]string, time.Time) {
	for {
		var blk *pem.Block
		if blk, certPEM = pem.Decode(certPEM); blk == nil {
			return nil, time.Time{}
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, time.Time{}
		}
		names := slices.Clone(leaf.DNSNames)
		for _, ip := range leaf.IPAddresses {
			names = append(names, ip.String())
		}
		if len(names) == 0 && leaf.Subject.CommonName != "" {
			names = []string{leaf.Subject.CommonName}
		}
		return names, leaf.NotAfter
	}
}

// expiries appends the names and expiry of every manual certificate.
func (mc *manualCerts) expiries(add func(name string, notAfter time.Time)) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	for _, e := range mc.entries {
		for _, n := range e.names {
			add(n, e.notAfter)
		}
	}
}

// watch polls the files until ctx ends.
func (mc *manualCerts) watch(ctx context.Context) {
	t := time.NewTicker(manualPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mc.mu.Lock()
		for _, e := range mc.entries {
			stamp, err := fileStamp(e.cert, e.key)
			if err == nil && stamp == e.stamp {
				continue
			}
			if err == nil {
				err = mc.reload(ctx, e)
			}
			if err != nil {
				mc.log.Error("certificate files changed but cannot be loaded; the previous certificate keeps serving",
					"cert", e.cert, "key", e.key, "error", err.Error())
				if stamp != "" {
					e.stamp = stamp // don't log again until the files change again
				}
				continue
			}
			mc.log.Info("reloaded certificate files", "cert", e.cert, "key", e.key)
		}
		mc.mu.Unlock()
	}
}

func fileStamp(paths ...string) (string, error) {
	s := ""
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("certificate file: %w", err)
		}
		s += fmt.Sprintf("%d:%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}
