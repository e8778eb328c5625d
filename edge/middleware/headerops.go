package middleware

import (
	"cmp"
	"net/http"
	"slices"
)

// HeaderOps changes one header map: first every name in Remove is deleted,
// then every Set replaces the values of its name, then every Add appends a
// value to its name. Names are header field names, canonical as the
// configuration writes them (Wrap canonicalizes them again); Remove takes
// literal names only (no "X-Debug-*" patterns). Values are literal strings:
// there are no placeholders such as {host} or {remote_ip} (yet). Names and
// values are checked by the configuration, not here.
type HeaderOps struct {
	Add, Set map[string]string
	Remove   []string
}

// Empty reports whether o changes nothing.
func (o HeaderOps) Empty() bool { return len(o.Add) == 0 && len(o.Set) == 0 && len(o.Remove) == 0 }

// RouteHeaders are a route's header operations: Request on the request
// before the route's action sees it, Response on its response. Removing
// Host from the request (which would change the authority sent to the
// backend in surprising ways) is rejected by the configuration; here it
// would only delete a Host field from r.Header, which net/http keeps in
// r.Host anyway.
type RouteHeaders struct {
	Request, Response HeaderOps
}

// Empty reports whether h changes nothing (the route needs no Wrap).
func (h RouteHeaders) Empty() bool { return h.Request.Empty() && h.Response.Empty() }

// Wrap returns next with h applied; next itself when h is Empty.
//
// The request operations run on a copy of r with a cloned header map, which
// is what next gets: the stages before this one (the cache keys entries on
// the client's Vary and Authorization headers) keep the client's view. The response operations run when
// the final response header goes out (see finalWriter), so they see, and can
// remove or replace, what the backend sent; 1xx responses pass untouched,
// and a 101 Switching Protocols gets them like any final response. A handler
// that returns or panics without writing gets them too. The writer handed
// to next supports Flush, Hijack and Unwrap, like SecurityHeaders'.
//
// The operations are compiled once, here; the maps in h are not kept or
// modified. Values set or added to an absent header are shared read-only
// slices (see SecurityHeaders).
func (h RouteHeaders) Wrap(next http.Handler) http.Handler {
	if h.Empty() {
		return next
	}
	req, res := compileOps(h.Request), compileOps(h.Response)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if req != nil {
			// A copy with its own header map: stages before this one (the
			// cache keys on Vary and Authorization) keep the client's view.
			r2 := *r
			r2.Header = r.Header.Clone()
			req.apply(r2.Header)
			r = &r2
		}
		if res == nil {
			next.ServeHTTP(w, r)
			return
		}
		fw := &finalWriter{ResponseWriter: w, hook: res}
		defer fw.finish(http.StatusOK)
		next.ServeHTTP(fw, r)
	})
}

// compiledOps is HeaderOps with canonical names, in a fixed (sorted) order,
// and values as ready slices. It is immutable and the finalHook of the
// response side.
type compiledOps struct {
	remove   []string
	set, add []headerField
}

// compileOps returns nil when o is empty.
func compileOps(o HeaderOps) *compiledOps {
	if o.Empty() {
		return nil
	}
	c := &compiledOps{set: compileFields(o.Set), add: compileFields(o.Add)}
	for _, name := range o.Remove {
		c.remove = append(c.remove, http.CanonicalHeaderKey(name))
	}
	return c
}

// compileFields sorts by canonical name (and value, for names that differ
// only in case) so that the result never depends on map order.
func compileFields(m map[string]string) []headerField {
	fields := make([]headerField, 0, len(m))
	for name, value := range m {
		fields = append(fields, headerField{http.CanonicalHeaderKey(name), []string{value}})
	}
	slices.SortFunc(fields, func(a, b headerField) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.vals[0], b.vals[0])
	})
	return fields
}

func (c *compiledOps) final(h http.Header, _ int) { c.apply(h) }

// apply runs the operations on h: Remove, then Set, then Add.
func (c *compiledOps) apply(h http.Header) {
	for _, name := range c.remove {
		delete(h, name)
	}
	for _, f := range c.set {
		h[f.key] = f.vals
	}
	for _, f := range c.add {
		if old := h[f.key]; len(old) > 0 {
			h[f.key] = append(old, f.vals[0])
		} else {
			h[f.key] = f.vals
		}
	}
}
