// Package upstream owns Gatehouse's side of the conversation with backends:
// pools of backends with their keep-alive connection pools (Pool, Backend),
// backend selection and failover, the trust model for client-supplied
// forwarding headers (TrustedProxies), and the forwarder itself (NewProxy),
// which cleans hop-by-hop headers, sets X-Forwarded-*, X-Real-IP and Via,
// streams bodies both ways, passes WebSockets through (websocket.go, over
// HTTP/1.1, HTTP/2 and HTTP/3, with package websocket's Tunnel), and maps
// every forwarding failure to a status in one place (see errors.go).
//
// The forwarder is built on net/http/httputil.ReverseProxy with a Rewrite
// function, a retrying RoundTripper over the pool, an ErrorHandler and a
// ModifyResponse hook. upstream never imports the edge package; it reads
// only plain data from edge/config.
package upstream
