package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/gatehouse-proxy/gatehouse/edge"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("validate", "--config FILE", stderr)
	path := configFlag(fs)
	_ = logLevelFlag(fs) // accepted like every command's; validate prints plain lines
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "gatehouse validate: --config FILE is required (or set $"+configEnv+")")
		fs.Usage()
		return exitUsage
	}
	cfg, err := config.Load(*path)
	if err == nil {
		// The last check: build everything `run` would build, without listening.
		var rt *edge.Runtime
		if rt, err = edge.NewRuntime(cfg, slog.New(slog.DiscardHandler)); err == nil {
			rt.Close()
		}
	}
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				fmt.Fprintln(stderr, e.Error())
			}
			fmt.Fprintf(stderr, "%s: %d problem(s)\n", *path, len(errs))
		} else {
			fmt.Fprintln(stderr, err)
		}
		return exitFail
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return exitOK
}
