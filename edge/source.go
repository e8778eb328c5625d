package edge

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// SetSource sets where ReloadSource reads the configuration from (for `run
// --config FILE`: config.Load of that file). Call it before Serve.
func (s *Server) SetSource(load func() (*config.Config, error)) { s.source = load }

// ErrNoSource is returned by ReloadSource when the configuration was not
// read from a file (the embedded quickstart), so there is nothing to reload.
var ErrNoSource = errors.New("this configuration was not read from a file, so there is nothing to reload")

// ReloadSource reads the configuration again and swaps it in (see Reload),
// logging the outcome under trigger ("SIGHUP", "admin", "watch"). On any
// error (an invalid file, with every FILE:LINE:COL problem logged, or a
// change that needs a restart) the running configuration keeps serving.
func (s *Server) ReloadSource(trigger string) error {
	// One at a time from reading the file to the swap: two triggers racing
	// (SIGHUP and the watcher) must not apply an older read last.
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.source == nil {
		s.log.Warn("reload ignored", "trigger", trigger, "reason", ErrNoSource.Error())
		return ErrNoSource
	}
	s.log.Info("reloading config", "trigger", trigger)
	cfg, err := s.source()
	if err == nil {
		for _, w := range cfg.Warnings {
			s.log.Warn("config warning", "warning", w)
		}
		err = s.Reload(cfg)
	}
	if s.observeReload != nil {
		s.observeReload(err == nil)
	}
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				s.log.Error("config error", "error", e.Error())
			}
		}
		s.log.Error("reload failed; the previous config keeps serving", "trigger", trigger, "error", err.Error())
	}
	return err
}

// WatchFile reloads when the file at path changes on disk: it polls the
// file's content every interval and reloads once the new content has stayed
// the same for one more interval (editors write in several steps). It
// returns when ctx ends. Polling rather than inotify also catches editors
// and tools that replace the file (rename over it) and config maps that
// swap a symlink.
func (s *Server) WatchFile(ctx context.Context, path string, interval time.Duration) {
	digest := func() ([32]byte, bool) {
		b, err := os.ReadFile(path)
		if err != nil {
			return [32]byte{}, false
		}
		return sha256.Sum256(b), true
	}
	last, _ := digest()
	var pending [32]byte
	havePending := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, ok := digest()
		switch {
		case !ok || cur == last:
			havePending = false
		case havePending && cur == pending:
			havePending = false
			last = cur
			_ = s.ReloadSource("watch") // logged; a bad file keeps the old config
		default:
			pending, havePending = cur, true
		}
	}
}
