package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/configs"
	"github.com/gatehouse-proxy/gatehouse/edge"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func cmdRun(args []string, stderr io.Writer) int {
	fs := flagSet("run", "[--config FILE] [--watch] [--log-level LEVEL]\n\nWithout --config (or $"+configEnv+") it serves the embedded configs/quickstart.yaml.", stderr)
	path := configFlag(fs)
	level := logLevelFlag(fs)
	watch := fs.Bool("watch", false, "reload the config file when it changes on disk")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	log, err := newLogger(*level, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse run:", err)
		return exitUsage
	}
	if *path == "" {
		log.Info("no --config given: serving the embedded quickstart", "file", configs.QuickstartName)
		cfg, err := config.Parse(configs.QuickstartName, configs.Quickstart)
		if err != nil {
			logConfigError(log, err)
			return exitFail
		}
		if *watch {
			log.Warn("--watch ignored: no config file to watch")
		}
		return serve(cfg, nil, "", log)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		logConfigError(log, err)
		return exitFail
	}
	reload := func() (*config.Config, error) { return config.Load(*path) }
	watched := ""
	if *watch {
		watched = *path
	}
	return serve(cfg, reload, watched, log)
}

// watchInterval is how often `run --watch` looks at the config file.
const watchInterval = time.Second

// serve runs the gateway until SIGINT/SIGTERM. SIGHUP (and the admin API's
// POST /reload) calls reload and swaps in the new config; a bad one is
// logged and the old one keeps serving. reload may be nil (nothing to
// reload from). A non-empty watch is a file whose changes trigger reloads.
func serve(cfg *config.Config, reload func() (*config.Config, error), watch string, log *slog.Logger) int {
	for _, w := range cfg.Warnings {
		log.Warn("config warning", "warning", w)
	}
	srv, err := edge.New(cfg, log)
	if err != nil {
		logConfigError(log, err)
		return exitFail
	}
	if err := srv.Listen(); err != nil {
		log.Error("cannot start", "error", err.Error())
		srv.Runtime().Close()
		return exitFail
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first SIGINT/SIGTERM, restore the default action so a
		// second one ends the process at once instead of waiting for the drain.
		<-ctx.Done()
		stop()
	}()
	// SIGHUP is always caught: with nothing to reload it must not kill the
	// process (its default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if reload != nil {
		srv.SetSource(reload)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = srv.ReloadSource("SIGHUP") // outcome logged; a bad file keeps the old config
			}
		}
	}()
	if watch != "" {
		log.Info("watching the config file for changes", "file", watch, "interval", watchInterval.String())
		go srv.WatchFile(ctx, watch, watchInterval)
	}
	if err := srv.Serve(ctx); err != nil {
		log.Error("serving failed", "error", err.Error())
		return exitFail
	}
	return exitOK
}

// logConfigError logs each FILE:LINE:COL problem as its own line.
func logConfigError(log *slog.Logger, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			log.Error("config error", "error", e.Error())
		}
		log.Error("invalid config; nothing started", "problems", len(errs))
		return
	}
	log.Error("invalid config; nothing started", "error", err.Error())
}
