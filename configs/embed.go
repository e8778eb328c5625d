// Package configs holds Gatehouse's example configuration files. The
// quickstart is embedded in the binary: `gatehouse run` without --config
// serves it. configs_test.go loads every file here so none of them rots.
package configs

import _ "embed"

// Quickstart is configs/quickstart.yaml.
//
//go:embed quickstart.yaml
var Quickstart []byte

// QuickstartName names the embedded quickstart in log lines and errors.
const QuickstartName = "configs/quickstart.yaml (embedded)"
