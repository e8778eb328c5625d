package tls

// Temporary: pins the modules the TLS work is built on while it is written.
// Removed once the real imports exist.
import (
	_ "github.com/caddyserver/certmagic"
	_ "github.com/quic-go/quic-go/http3"
	_ "go.uber.org/zap"
	_ "golang.org/x/time/rate"
)
