package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/edge"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("validate", "--config FILE [--against FILE]\n\nAlso prints what reloading FILE would change: against --against FILE, or else\nagainst the gateway running with FILE's admin address, if one answers there.", stderr)
	path := configFlag(fs)
	against := fs.String("against", "", "a config file to compare with instead of the running gateway")
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
		printProblems(stderr, *path, err)
		return exitFail
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return printPlan(stdout, stderr, cfg, *path, *against)
}

// printProblems prints why the config file path did not load or build:
// one FILE:LINE:COL line per problem and a count, or the error itself.
func printProblems(stderr io.Writer, path string, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(stderr, e.Error())
		}
		fmt.Fprintf(stderr, "%s: %d problem(s)\n", path, len(errs))
		return
	}
	fmt.Fprintln(stderr, err)
}

// printPlan prints what a reload of cfg would change: against the config
// file against, or the running gateway's config (its admin API's POST
// /plan). Without either it prints nothing. It returns validate's exit
// code: exitFail when against does not load (its problems are printed),
// else exitOK. The running gateway refusing the file (which validated
// here, so the difference is in the environment, such as ${VAR}s) gives
// warnings; no gateway answering gives nothing.
func printPlan(stdout, stderr io.Writer, cfg *config.Config, path, against string) int {
	var plan []string
	var source string
	switch {
	case against != "":
		old, err := config.Load(against)
		if err != nil {
			fmt.Fprintf(stderr, "gatehouse validate: no plan: --against %s does not load:\n", against)
			printProblems(stderr, against, err)
			return exitFail
		}
		plan, source = edge.Plan(old, cfg), against
	case cfg.Global.Admin != "":
		var err error
		if plan, err = remotePlan(cfg.Global.Admin, path); err != nil {
			var rejected *planRejected
			if errors.As(err, &rejected) {
				fmt.Fprintf(stderr, "warning: no plan: the gateway running at %s could not read this file (it validated here: check what differs there, such as ${VAR}s):\n", cfg.Global.Admin)
				for _, e := range rejected.errors {
					fmt.Fprintln(stderr, "warning:", e)
				}
			}
			return exitOK // else no gateway running there: nothing to compare with
		}
		source = "the gateway running at " + cfg.Global.Admin
	default:
		return exitOK
	}
	if len(plan) == 0 {
		fmt.Fprintf(stdout, "reload plan (against %s): no changes\n", source)
		return exitOK
	}
	fmt.Fprintf(stdout, "reload plan (against %s):\n", source)
	for _, line := range plan {
		fmt.Fprintln(stdout, "  "+line)
	}
	return exitOK
}

// planRejected is the admin API's 422 answer to POST /plan: the problems
// the running gateway found in the file.
type planRejected struct{ errors []string }

func (e *planRejected) Error() string {
	return "admin /plan: 422: " + strings.Join(e.errors, "; ")
}

// remotePlan sends the file to the admin API's POST /plan.
func remotePlan(admin, path string) ([]string, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil}}
	res, err := c.Post("http://"+admin+"/plan?name="+url.QueryEscape(path), "application/yaml", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var out struct {
		Plan   []string `json:"plan"`
		Errors []string `json:"errors"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&out); err != nil {
		return nil, err
	}
	if res.StatusCode == http.StatusUnprocessableEntity && len(out.Errors) > 0 {
		return nil, &planRejected{errors: out.Errors}
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin /plan: %d %v", res.StatusCode, out.Errors)
	}
	return out.Plan, nil
}
