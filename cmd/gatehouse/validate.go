package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("validate", "--config FILE", stderr)
	path := configFlag(fs)
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
		if u := cfg.Unsupported(); len(u) > 0 {
			err = u
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
