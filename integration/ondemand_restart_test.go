package integration

import (
	"strings"
	"testing"
	"time"
)

// TestOnDemandRestart: certificates obtained on demand are served after a
// restart even when there are more of them than the new rate_limit allows
// orders: the limit applies to orders, not to loading stored certificates.
// Nothing new is ordered and the ask endpoint is not consulted again.
func TestOnDemandRestart(t *testing.T) {
	t.Parallel()
	names := []string{"one.ondemand.test", "two.ondemand.test", "three.ondemand.test"}
	ask := newAskServer(t, names...)
	const sites = `sites:
  - hosts: ["*.ondemand.test"]
    tls: on_demand
    routes: [{path: /, respond: {body: "on demand\n"}}]
`
	g, p := startACMEGateway(t, "[http-01]", ask.URL, sites)
	restart := func(rateLimit string) {
		t.Helper()
		if i := strings.Index(g.global, "  rate_limit:"); i >= 0 {
			g.global = g.global[:i]
		}
		g.global += "  rate_limit: " + rateLimit + "\n"
		g.WriteSites(sites)
		g.Restart()
		if err := g.waitListening(g.HTTPSAddr()); err != nil {
			t.Fatal(err)
		}
	}
	restart("3")

	serials := map[string]string{}
	for _, name := range names {
		cs, err := handshake(g.HTTPSAddr(), name, p.Roots, certWait)
		if err != nil {
			t.Fatalf("first handshake for %s: %v (asked %d times, orders for it: %d)", name, err, ask.Asked(name), p.OrdersFor(name))
		}
		serials[name] = checkChain(t, cs, name, p.Root).SerialNumber.String()
		if n := p.OrdersFor(name); n != 1 {
			t.Errorf("Pebble saw %d orders for %s, want 1", n, name)
		}
	}
	orders := p.Orders()
	asked := map[string]int{}
	for _, name := range names {
		asked[name] = ask.Asked(name)
	}

	restart("1")
	for round := 1; round <= 2; round++ {
		for _, name := range names {
			cs, err := handshake(g.HTTPSAddr(), name, p.Roots, 10*time.Second)
			if err != nil {
				t.Fatalf("after restart with rate_limit 1, round %d: handshake for %s: %v", round, name, err)
			}
			if got := checkChain(t, cs, name, p.Root).SerialNumber.String(); got != serials[name] {
				t.Errorf("after restart, %s served serial %s, want the stored %s", name, got, serials[name])
			}
		}
	}
	if n := p.Orders() - orders; n != 0 {
		t.Errorf("Pebble saw %d new orders after the restart, want 0 (names ordered: %v)", n, p.OrderedNames())
	}
	for _, name := range names {
		if n := ask.Asked(name) - asked[name]; n != 0 {
			t.Errorf("the ask endpoint was asked %d more times about %s, whose certificate is stored", n, name)
		}
	}
	if g.Exited() {
		t.Fatalf("gateway exited (code %d)", g.Cmd.ProcessState.ExitCode())
	}
}
