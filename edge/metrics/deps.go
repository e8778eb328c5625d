package metrics

// Pinned dependencies for the live-operations work (removed once used).
import (
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "golang.org/x/crypto/bcrypt"
)
