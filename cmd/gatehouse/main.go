// Command gatehouse is the Gatehouse TLS edge gateway.
//
//	gatehouse run      --config FILE        serve until SIGINT/SIGTERM; SIGHUP reloads FILE
//	gatehouse validate --config FILE        check FILE, print every problem, exit 1 if any
//	gatehouse proxy    --from HOST[:PORT] --to ADDR [--to ADDR ...]
//	gatehouse version
//
// Exit codes: 0 success, 1 bad config or runtime failure, 2 usage error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"

	// WebSocket over HTTP/2 (RFC 8441): net/http's HTTP/2 server advertises
	// and accepts extended CONNECT only with GODEBUG=http2xconnect=1, read
	// from the environment when net/http initialises; a //go:debug line
	// cannot set it (the go command rejects the unregistered name). This
	// import sets it first, unless the operator's GODEBUG already decides.
	_ "github.com/gatehouse-proxy/gatehouse/websocket/xconnect"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "0.1.0-dev"

const (
	exitOK     = 0
	exitFail   = 1
	exitUsage  = 2
	configEnv  = "GATEHOUSE_CONFIG"
	usageShort = `Gatehouse: a TLS edge gateway.

Usage:
  gatehouse run      --config FILE      serve until SIGINT/SIGTERM; SIGHUP reloads FILE
  gatehouse validate --config FILE      check FILE, print every problem, exit 1 if any
  gatehouse proxy    --from HOST[:PORT] --to ADDR [--to ADDR ...]
                                        one-line reverse proxy
  gatehouse version                     print the version

--config may also come from $GATEHOUSE_CONFIG. Logs are JSON lines on stderr.
Run "gatehouse COMMAND --help" for a command's flags.
Exit codes: 0 success, 1 bad config or runtime failure, 2 usage error.
`
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageShort)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest, stderr)
	case "validate":
		return cmdValidate(rest, stdout, stderr)
	case "proxy":
		return cmdProxy(rest, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "gatehouse %s %s %s/%s\n", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usageShort)
		return exitOK
	default:
		fmt.Fprintf(stderr, "gatehouse: unknown command %q\n\n%s", cmd, usageShort)
		return exitUsage
	}
}

// flagSet returns a FlagSet that prints its usage to stderr and reports
// errors instead of exiting, so realMain stays testable.
func flagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: gatehouse %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; it returns an exit code and false when the caller
// should stop (help asked: 0; bad flags or stray arguments: 2).
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "gatehouse %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, false
	}
	return 0, true
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv(configEnv), "configuration `FILE` (default $"+configEnv+")")
}

func logLevelFlag(fs *flag.FlagSet) *string {
	return fs.String("log-level", "info", "log level: debug, info, warn or error")
}

// newLogger returns the JSON logger on stderr at the named level.
func newLogger(level string, stderr io.Writer) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info", "":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", level)
	}
	return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: l})), nil
}
