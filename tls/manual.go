package tls

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// manualPollInterval is how often certificate files are checked for changes.
var manualPollInterval = 5 * time.Second

// manualCerts serves tls: {cert, key} files and swaps in new contents when
// the files change on disk. A bad new file is logged and the old certificate
// keeps serving. Only watch's goroutine touches entries after load.
type manualCerts struct {
	cfg     *certmagic.Config
	cache   *certmagic.Cache
	log     *slog.Logger
	mu      sync.Mutex
	entries []*manualEntry
}

type manualEntry struct {
	cert, key string
	stamp     string // modification times and sizes of both files
	hash      string // CertMagic cache key of the loaded certificate
}

func newManualCerts(cfg *certmagic.Config, cache *certmagic.Cache, log *slog.Logger) *manualCerts {
	return &manualCerts{cfg: cfg, cache: cache, log: log}
}

// load caches every manual certificate; an unreadable or invalid pair is an error.
func (mc *manualCerts) load(ctx context.Context, sites []*config.Site) error {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	for _, s := range sites {
		if s.TLS.Mode != config.TLSManual {
			continue
		}
		e := &manualEntry{cert: s.TLS.Cert, key: s.TLS.Key}
		if err := mc.reload(ctx, e); err != nil {
			return err
		}
		mc.entries = append(mc.entries, e)
	}
	return nil
}

// reload reads e's files and, when they hold a new certificate, caches it
// and drops the previous one.
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
	if e.hash != "" && e.hash != hash {
		mc.cache.Remove([]string{e.hash})
	}
	e.hash, e.stamp = hash, stamp
	return nil
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
