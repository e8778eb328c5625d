package integration

// Temporary: pins the ACME test peers' modules while their tests are written.
import (
	_ "github.com/letsencrypt/pebble/v2/wfe"
	_ "github.com/miekg/dns"
)
