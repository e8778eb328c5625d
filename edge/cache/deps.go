package cache

// Pinned dependencies the cache is built on (removed once used for real).
import (
	_ "github.com/maypok86/otter/v2"
	_ "golang.org/x/sync/singleflight"
)
