// Package cache is Gatehouse's shared HTTP response cache (RFC 9111, with
// stale-while-revalidate and stale-if-error from RFC 5861 and the
// Cache-Status header of RFC 9211), used as middleware: Cache.Handler wraps
// the handlers of sites that enable caching. One Cache serves every site of a
// server and survives configuration reloads; Close stops its background work.
//
// # Keys and variants
//
// The key is scheme ("https" when the request came over TLS) + "://" + Host
// + the request URI (escaped path, with query), in a canonical form that one
// function (canonicalKey) builds for requests, for the Location and
// Content-Location an unsafe method invalidates and for PurgeURL (PurgePrefix
// canonicalises its prefix the same way): scheme and host lower-cased, the
// scheme's default port (:80, :443) and a trailing dot on the host dropped;
// in path and query, percent-encodings upper-cased, encoded unreserved
// characters (A-Z a-z 0-9 - . _ ~) decoded, and raw control, space and
// non-ASCII bytes percent-encoded (so "/café", "/caf%c3%a9" and "/caf%C3%A9"
// are one key). Each key holds up to 16 Vary variants; a stored
// response is selected when the request's values of the fields its own Vary
// nominates equal the stored ones after normalisation (list elements trimmed
// and joined with ","). "Vary: *" is never stored.
//
// # What is stored
//
// Only complete responses to GET: the body is teed into a buffer while it
// streams to the client and is committed when the handler returns normally,
// the Content-Length (if any) matched, no write to the client failed and the
// request's context is still live. A response larger than MaxObjectSize
// streams through unstored. Beyond RFC 9111 §3 (understood final status, no
// no-store or private, the Authorization rules of §3.5, explicit freshness,
// public or a heuristically cacheable status), the cache does not store:
//   - responses with Set-Cookie (as nginx does by default);
//   - responses that announce trailers;
//   - responses that could never be served without a full fetch: no
//     freshness (or no-cache) and no validator (ETag, Last-Modified);
//   - responses to HEAD or Range requests, and 206 or 304 responses;
//   - 5xx responses fetched by a background revalidation (the stale entry is
//     kept instead).
//
// A response that may not be stored only because of its request (its
// Authorization, say) leaves a stored response of the URL alone; one that
// says no-store removes the stored response it revalidated. A 304 freshens
// the stored response whatever the revalidating request carried (RFC 9111
// §4.3.4), unless the updated response itself may not be stored.
//
// Hop-by-hop fields, fields named in Connection, Age and Cache-Status are not
// stored; a Date is added when the origin sent none. Qualified no-cache="f"
// and private="f" are treated as their unqualified forms.
//
// # Memory and retention
//
// Entries live in an otter W-TinyLFU cache whose weight is the bytes of body,
// headers and key plus a fixed overhead, bounded by MaxSize. An entry is kept
// after it turns stale for max(1h, stale-while-revalidate, stale-if-error) so
// it can be revalidated or served stale; then it expires. Eviction for size
// may drop any entry earlier. Expiry follows Options.Now.
//
// Bodies being received for storing are held in a buffer that grows as data
// arrives (at most 64 KiB is allocated up front for a declared
// Content-Length). All such buffers together are bounded by MaxBuffering
// (default MaxSize/4, capped at 512 MiB), reserved as bytes arrive: a
// response whose declared length does not fit is not stored (its
// Cache-Status says so), and one that outgrows the room left stops being
// buffered and streams on unstored. Stats.Buffering is the bytes reserved.
//
// # Serving
//
// Freshness, Age (RFC 9111 §4.2.3) and the request directives max-age,
// max-stale, min-fresh, no-cache (or Pragma: no-cache), no-store and
// only-if-cached are honoured. A stale entry is revalidated with its
// validators; a 304 updates the stored header (§4.3.4) and the stored body is
// served. The client's If-None-Match/If-Modified-Since are answered by the
// cache (they are taken off a forwarded GET so that a full, storable
// response comes back); "If-None-Match: *" matches any stored response, with
// or without an ETag (RFC 9110 §13.1.2). If-Match and If-Unmodified-Since
// requests bypass the store. A single byte range is served from a stored 200
// (206 or 416); several ranges get the full 200. HEAD is answered from a
// stored GET.
//
// Concurrent requests for a key wait (up to CollapseWait) for the one that
// went upstream and then share what it stored; if nothing usable was stored
// they go upstream themselves. Waiters are released as soon as the outcome
// is known, not when the leader's client has taken the response: when the
// leader's response headers show it will not be stored, once a 304 has
// freshened the stored response, and when stale is to be served on error.
// If the leader gives up for a reason of its own (its client went away, a
// failed write, a panic, a partial body), its waiters collapse again behind
// one of them instead of all going upstream (at most 3 rounds, CollapseWait
// in all). A key whose response was not storable because of what it said
// (no-store, private, Set-Cookie, Vary: *, too large, no freshness; not a
// 5xx, nor a refusal due to the request such as Authorization) is
// remembered for 10 seconds (at most 10,000 keys): requests for it go
// upstream at once without collapsing, so that a slow uncacheable URL (a
// long poll) does not serialise its clients. Storing a response for the key
// ends that.
//
// Stale entries with stale-while-revalidate are served while one background
// revalidation per entry runs (at most 64 at a time, each bounded to 2
// minutes, all cancelled and awaited by Close). stale-if-error (response or
// request directive) answers a 500/502/503/504 from next, or a panic before
// any header, with the stale entry. must-revalidate, proxy-revalidate,
// s-maxage and no-cache forbid all stale serving.
//
// # Cache-Status
//
// Every GET/HEAD response and every unsafe-method response carries a
// Cache-Status member named "gatehouse", appended after any member from
// caches nearer the origin: "hit" with "ttl" (negative when stale) for
// responses from the store; otherwise "fwd" (uri-miss, vary-miss, stale,
// request, bypass, method), "fwd-status" when the client's status differs
// from next's, "stored", "collapsed" (or "collapsed=?0" when the wait gave
// nothing usable) and "detail" (stale-while-revalidate, stale-if-error,
// only-if-cached). "stored" is decided when the headers are sent: a body that
// then fails, outgrows MaxObjectSize without a Content-Length, or outgrows
// the MaxBuffering room, is dropped although the header said stored.
//
// # Not implemented
//
//   - A 304 is applied to the entry that was revalidated; its validators are
//     not re-checked against that entry (RFC 9111 §4.3.4 selection).
//   - Among several matching variants the most recently received is used,
//     rather than comparing Date values.
//   - Multi-range requests are answered with the full 200.
//   - HEAD responses never freshen stored entries (§4.3.5).
//   - Request max-stale is honoured only within the retention window above.
//
// A successful (2xx/3xx) response to an unsafe method invalidates the target
// URI and same-origin Location and Content-Location, all variants. Requests
// with Upgrade, and CONNECT, OPTIONS and TRACE, reach next with the client's
// ResponseWriter untouched and carry no Cache-Status.
package cache
