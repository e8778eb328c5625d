package metrics

// Pinned dependencies for the live-operations work (removed once used).
import (
	_ "golang.org/x/crypto/bcrypt"
)
