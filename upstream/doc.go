// Package upstream owns Gatehouse's side of the conversation with backends:
// pools of backends with their keep-alive connection pools (Pool, Backend;
// pool.go, backend.go), backend selection (the Balancer policies:
// balancer.go for round_robin, least_conn, random_two and first, hash.go for
// ip_hash and header_hash, sticky.go for cookie), active health checks
// (healthcheck.go), passive health (passive.go), retries with a per-pool
// budget (retry.go), the admin snapshot (status.go), the trust model for
// client-supplied forwarding headers (TrustedProxies), and the forwarder
// itself (NewProxy), which cleans hop-by-hop headers, sets X-Forwarded-*,
// X-Real-IP and Via, streams bodies both ways, passes WebSockets through
// (websocket.go, over HTTP/1.1, HTTP/2 and HTTP/3, with package websocket's
// Tunnel), and maps every forwarding failure to a status in one place (see
// errors.go).
//
// The forwarder is built on net/http/httputil.ReverseProxy with a Rewrite
// function, a RoundTripper over the pool that picks, fails over and retries
// (forward.go), an ErrorHandler and a ModifyResponse hook. upstream never
// imports the edge package; it reads only plain data from edge/config.
//
// Lifecycle: NewPool builds a pool (PoolOptions: logger, trusted proxies)
// and starts nothing; Start runs its health checker; Close stops the
// checker and waits for it. The hot path (picking, counting, ejection
// deadlines) uses atomics only.
package upstream
