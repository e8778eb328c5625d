package configs_test

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/configs"
	"github.com/gatehouse-proxy/gatehouse/edge"
	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

// TestEveryConfigLoads keeps the example files from rotting: each one must
// decode, validate, ask only for features this build serves, and build a
// complete Runtime.
func TestEveryConfigLoads(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("want at least quickstart.yaml and reference.yaml, found %v", files)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatalf("%v", err)
			}
			if u := cfg.Unsupported(); len(u) > 0 {
				t.Fatalf("asks for features this build lacks:\n%v", u)
			}
			rt, err := edge.NewRuntime(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatalf("building runtime: %v", err)
			}
			rt.Close()
		})
	}
}

// The embedded copy is what `gatehouse run` serves without --config.
func TestEmbeddedQuickstartServes(t *testing.T) {
	cfg, err := config.Parse(configs.QuickstartName, configs.Quickstart)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Unsupported(); len(u) > 0 {
		t.Fatalf("embedded quickstart asks for features this build lacks:\n%v", u)
	}
}
