// Package xconnect switches on RFC 8441 extended CONNECT in net/http's
// HTTP/2 server, so that browsers may open WebSockets over HTTP/2. Import it
// for its side effect, from the main package (and from tests that need it):
//
//	import _ "github.com/gatehouse-proxy/gatehouse/websocket/xconnect"
//
// Since Go 1.24 the server neither advertises SETTINGS_ENABLE_CONNECT_PROTOCOL
// nor accepts a :protocol pseudo-header unless the environment variable
// GODEBUG contains "http2xconnect=1" when net/http initialises
// (golang/go#71128: handlers that did not expect extended CONNECT broke).
// The switch is read once, by net/http's init function, from the
// environment; it is not a registered GODEBUG setting, so a //go:debug
// directive is rejected by the go command, and http.Server and
// http.HTTP2Config offer no field for it.
//
// This package's init adds http2xconnect=1 to GODEBUG unless the variable
// already mentions http2xconnect, so an operator can still turn it off with
// GODEBUG=http2xconnect=0. It runs before net/http's init because it
// imports only os and strings and its import path sorts before "net/http":
// since Go 1.21 the language specification initialises packages in import
// path order, each as soon as its imports are initialised. (The one place
// where that fails is this package's own internal test files: importing
// net/http there makes it a dependency; its tests are external for that
// reason.) Enabled reports the outcome; TestAdvertised checks the effect.
package xconnect

import (
	"os"
	"strings"
)

const setting = "http2xconnect"

func init() {
	v := os.Getenv("GODEBUG")
	if strings.Contains(v, setting+"=") {
		return // the operator decided
	}
	if v != "" {
		v += ","
	}
	_ = os.Setenv("GODEBUG", v+setting+"=1")
}

// Enabled reports whether GODEBUG asks net/http's HTTP/2 server for extended
// CONNECT (the same test net/http makes).
func Enabled() bool { return strings.Contains(os.Getenv("GODEBUG"), setting+"=1") }
