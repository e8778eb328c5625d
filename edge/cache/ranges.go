package cache

import (
	"net/http"
	"strconv"
	"strings"
)

// notModified evaluates a GET/HEAD's If-None-Match (weak comparison) or, when
// that is absent, If-Modified-Since against a stored response's validators
// (RFC 9110 §13.1.2, §13.1.3, §13.2.2).
func notModified(h http.Header, etag, lastModified string) bool {
	if inm, ok := h["If-None-Match"]; ok {
		return etagListMatch(inm, etag, false)
	}
	ims := h["If-Modified-Since"]
	if len(ims) == 0 || lastModified == "" {
		return false
	}
	since, err := http.ParseTime(ims[0])
	if err != nil {
		return false
	}
	lm, err := http.ParseTime(lastModified)
	return err == nil && !lm.After(since)
}

// etagListMatch reports whether the field lines in list ("*" or
// entity-tags) match the entity-tag of a current representation, with weak
// or strong comparison (RFC 9110 §8.8.3.2). "*" matches any representation,
// also one without an entity-tag (etag ""), which no entity-tag matches.
func etagListMatch(list []string, etag string, strong bool) bool {
	for _, v := range list {
		for {
			v = strings.TrimLeft(v, " \t,")
			if v == "" {
				break
			}
			if v[0] == '*' {
				return true
			}
			tag, rest := scanETag(v)
			if tag == "" {
				break // malformed: ignore the rest of this line
			}
			if etag != "" && etagEqual(tag, etag, strong) {
				return true
			}
			v = rest
		}
	}
	return false
}

// scanETag splits one entity-tag (W/"..." or "...") off the front of s.
func scanETag(s string) (tag, rest string) {
	i := 0
	if strings.HasPrefix(s, "W/") {
		i = 2
	}
	if len(s) < i+2 || s[i] != '"' {
		return "", ""
	}
	j := strings.IndexByte(s[i+1:], '"')
	if j < 0 {
		return "", ""
	}
	end := i + 1 + j + 1
	return s[:end], s[end:]
}

func etagEqual(a, b string, strong bool) bool {
	aw, bw := strings.HasPrefix(a, "W/"), strings.HasPrefix(b, "W/")
	if strong {
		return !aw && !bw && a == b
	}
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// ifRangeHolds reports whether a Range may be honoured given If-Range
// (RFC 9110 §13.1.5): absent, a strongly matching entity-tag, or a date equal
// to Last-Modified.
func ifRangeHolds(h http.Header, e *entry) bool {
	v := h.Get("If-Range")
	if v == "" {
		return true
	}
	if strings.HasPrefix(v, `"`) || strings.HasPrefix(v, `W/"`) {
		return etagEqual(v, e.etag, true)
	}
	if e.lastModified == "" {
		return false
	}
	t, err := http.ParseTime(v)
	lm, err2 := http.ParseTime(e.lastModified)
	return err == nil && err2 == nil && t.Equal(lm)
}

type rangeResult int

const (
	rangeIgnore        rangeResult = iota // not a single valid bytes range: serve the full response
	rangeSatisfiable                      // one range: 206
	rangeUnsatisfiable                    // 416
)

// parseRange parses a Range field against a body of size bytes. Only a
// single bytes range is honoured (a-b, a-, -n); several ranges are answered
// with the full 200 (RFC 9110 §14.2 lets a server ignore Range).
func parseRange(spec string, size int64) (start, length int64, res rangeResult) {
	const unit = "bytes="
	if len(spec) < len(unit) || !strings.EqualFold(spec[:len(unit)], unit) {
		return 0, 0, rangeIgnore
	}
	spec = trimOWS(spec[len(unit):])
	if strings.IndexByte(spec, ',') >= 0 {
		return 0, 0, rangeIgnore
	}
	dash := strings.IndexByte(spec, '-')
	if dash < 0 {
		return 0, 0, rangeIgnore
	}
	first, last := trimOWS(spec[:dash]), trimOWS(spec[dash+1:])
	if first == "" {
		n, ok := parseRangeInt(last)
		if !ok {
			return 0, 0, rangeIgnore
		}
		if n == 0 || size == 0 {
			return 0, 0, rangeUnsatisfiable
		}
		n = min(n, size)
		return size - n, n, rangeSatisfiable
	}
	a, ok := parseRangeInt(first)
	if !ok {
		return 0, 0, rangeIgnore
	}
	b := size - 1
	if last != "" {
		if b, ok = parseRangeInt(last); !ok || b < a {
			return 0, 0, rangeIgnore
		}
	}
	if a >= size {
		return 0, 0, rangeUnsatisfiable
	}
	b = min(b, size-1)
	return a, b - a + 1, rangeSatisfiable
}

func parseRangeInt(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 1<<63 - 1, true // only digits: out of range means "huge"
	}
	return n, true
}

// serveRange answers a single-range request from a stored 200 and reports
// whether it did; false means the full response should be served.
func (c *Cache) serveRange(w http.ResponseWriter, spec string, e *entry) bool {
	size := int64(len(e.body))
	start, length, res := parseRange(spec, size)
	h := w.Header()
	switch res {
	case rangeSatisfiable:
		h["Content-Range"] = []string{"bytes " + strconv.FormatInt(start, 10) + "-" +
			strconv.FormatInt(start+length-1, 10) + "/" + strconv.FormatInt(size, 10)}
		h["Content-Length"] = []string{strconv.FormatInt(length, 10)}
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(e.body[start : start+length])
		return true
	case rangeUnsatisfiable:
		h["Content-Range"] = []string{"bytes */" + strconv.FormatInt(size, 10)}
		h["Content-Length"] = []string{"0"}
		delete(h, "Content-Type")
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return true
	}
	return false
}
