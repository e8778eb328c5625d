package router

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

const textPlain = "text/plain; charset=utf-8"

// Error replies with status and a short plain-text body such as
// "404 Not Found\n", with Content-Type text/plain; charset=utf-8 and
// X-Content-Type-Options: nosniff. Like http.Error it drops a Content-Length
// set earlier; other headers already set are kept.
func Error(w http.ResponseWriter, status int) {
	body := strconv.Itoa(status)
	if text := http.StatusText(status); text != "" {
		body += " " + text
	}
	body += "\n"
	h := w.Header()
	h.Set("Content-Type", textPlain)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// bodyAllowed reports whether a response with status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// respond answers with a fixed status, headers and body.
type respond struct {
	status int
	header http.Header // canonical keys; copied into every response
	body   string      // "" when the status allows no body
}

func newRespond(c *config.Respond) (http.Handler, error) {
	status := c.Status
	if status == 0 {
		status = http.StatusOK
	}
	if status < 200 || status > 599 {
		return nil, fmt.Errorf("respond: status %d out of range 200-599", status)
	}
	h := &respond{status: status, header: make(http.Header, len(c.Headers)+2)}
	for _, k := range slices.Sorted(maps.Keys(c.Headers)) {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") || strings.ContainsAny(c.Headers[k], "\r\n\x00") {
			return nil, fmt.Errorf("respond: bad header %q", k)
		}
		h.header.Set(k, c.Headers[k])
	}
	h.header.Del("Content-Length") // always computed from the body
	if bodyAllowed(status) {
		h.body = c.Body
		if h.body != "" && h.header.Get("Content-Type") == "" {
			h.header.Set("Content-Type", textPlain)
		}
		h.header.Set("Content-Length", strconv.Itoa(len(h.body)))
	} else if c.Body != "" {
		return nil, fmt.Errorf("respond: status %d cannot have a body", status)
	}
	return h, nil
}

func (h *respond) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dst := w.Header()
	for k, vv := range h.header {
		dst[k] = slices.Clone(vv)
	}
	w.WriteHeader(h.status)
	if h.body != "" && r.Method != http.MethodHead {
		io.WriteString(w, h.body)
	}
}

// redirect answers with a Location of exactly `to` (relative targets are not
// resolved, unlike http.Redirect). GET requests also get the target and a
// newline as a plain-text body; HEAD gets the same headers without it.
type redirect struct {
	to     string
	status int
	body   string
	length string
}

func newRedirect(c *config.Redirect) (http.Handler, error) {
	status := c.Status
	if status == 0 {
		status = http.StatusPermanentRedirect
	}
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return nil, fmt.Errorf("redirect: status %d is not one of 301, 302, 303, 307, 308", status)
	}
	if c.To == "" {
		return nil, errors.New("redirect: empty target")
	}
	for i := 0; i < len(c.To); i++ {
		if c.To[i] < ' ' || c.To[i] == 0x7f {
			return nil, errors.New("redirect: control character in target")
		}
	}
	body := c.To + "\n"
	return &redirect{to: c.To, status: status, body: body, length: strconv.Itoa(len(body))}, nil
}

func (h *redirect) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dst := w.Header()
	dst.Set("Location", h.to)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		dst.Set("Content-Length", "0")
		w.WriteHeader(h.status)
		return
	}
	dst.Set("Content-Type", textPlain)
	dst.Set("Content-Length", h.length)
	w.WriteHeader(h.status)
	if r.Method == http.MethodGet {
		io.WriteString(w, h.body)
	}
}
