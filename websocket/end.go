package websocket

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// End is one side of a Tunnel: the client's (a hijacked HTTP/1.1
// connection, or the stream of an HTTP/2 or HTTP/3 extended CONNECT) or the
// backend's (the connection that answered 101).
//
// Concurrency contract: a Tunnel calls Read from one goroutine and Write and
// then CloseWrite from another; Close may come from any goroutine at any
// time, concurrently with the others, and must make blocked and later Reads
// and Writes return an error.
type End interface {
	io.Reader
	io.Writer
	// CloseWrite tells the peer that no more bytes follow (a TCP FIN, a TLS
	// close_notify) while reading goes on. An end that cannot half-close
	// returns an error (errors.ErrUnsupported) and the tunnel then closes
	// completely.
	CloseWrite() error
	// Close releases the end. It is safe to call more than once.
	Close() error
}

// readDeadliner is implemented by ends whose read deadline may be moved again
// after it expired, as a net.Conn's (TLS included) may. A Tunnel watches
// idleness through the read deadlines of such ends; it never sets one on
// other ends (an HTTP/2 stream's read deadline breaks the stream for good).
type readDeadliner interface {
	SetReadDeadline(time.Time) error
}

// ConnEnd is an End over a net.Conn (TCP or TLS). Fill in the fields before
// handing it to a Tunnel and do not touch them afterwards.
type ConnEnd struct {
	// Conn is the connection: it is written to, half-closed, closed and, for
	// the idle timeout, given read deadlines.
	Conn net.Conn
	// Buffered are bytes that were already read from Conn (for example what
	// an http.Server had buffered beyond the handshake when it was
	// hijacked); they are delivered before anything else.
	Buffered []byte
	// Reader, if not nil, is read instead of Conn: for example the body of a
	// 101 response from an http.Transport, which first returns what the
	// transport buffered and then reads Conn. Its deadlines are Conn's.
	Reader io.Reader
	// OnClose, if not nil, runs once, when Close is first called, after Conn
	// was closed (for example to close the response body, which releases
	// the backend's in-flight count).
	OnClose func()

	once sync.Once
}

// Read implements End.
func (c *ConnEnd) Read(p []byte) (int, error) {
	if len(c.Buffered) > 0 {
		n := copy(p, c.Buffered)
		c.Buffered = c.Buffered[n:]
		if len(c.Buffered) == 0 {
			c.Buffered = nil
		}
		return n, nil
	}
	if c.Reader != nil {
		return c.Reader.Read(p)
	}
	return c.Conn.Read(p)
}

// Write implements End.
func (c *ConnEnd) Write(p []byte) (int, error) { return c.Conn.Write(p) }

// CloseWrite half-closes Conn when it can (*net.TCPConn, *tls.Conn, Unix
// sockets); otherwise it returns errors.ErrUnsupported.
func (c *ConnEnd) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// SetReadDeadline sets Conn's read deadline.
func (c *ConnEnd) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// Close closes Conn, then runs OnClose; only the first call does anything.
func (c *ConnEnd) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		err = c.Conn.Close()
		if c.OnClose != nil {
			c.OnClose()
		}
	})
	return err
}

// StreamEnd is the End of an HTTP/2 or HTTP/3 request stream that carries a
// WebSocket (extended CONNECT): bytes from the client are read from the
// request body, bytes to the client are written to the ResponseWriter and
// flushed at once.
//
// It is only valid while the handler that received the request is running:
// that handler must wait for the Tunnel to end before it returns, and must
// have sent the response header (200) before. A stream cannot be
// half-closed without ending the handler, so CloseWrite reports
// errors.ErrUnsupported and the tunnel closes completely; the stream then
// ends normally when the handler returns.
type StreamEnd struct {
	w    http.ResponseWriter
	body io.Reader
	rc   *http.ResponseController

	// writing and closed order Write against Close (each sets its own flag
	// then reads the other's): either Write sees closed and does not start,
	// or Close sees the Write in progress and breaks it.
	writing atomic.Bool
	closed  atomic.Bool
}

// NewStreamEnd returns the End for the stream of r, answered through w.
func NewStreamEnd(w http.ResponseWriter, r *http.Request) *StreamEnd {
	return &StreamEnd{w: w, body: r.Body, rc: http.NewResponseController(w)}
}

// Read implements End.
func (s *StreamEnd) Read(p []byte) (int, error) { return s.body.Read(p) }

// Write implements End: it writes p as DATA and flushes.
func (s *StreamEnd) Write(p []byte) (int, error) {
	s.writing.Store(true)
	defer s.writing.Store(false)
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

// CloseWrite implements End; streams cannot half-close (see StreamEnd).
func (s *StreamEnd) CloseWrite() error { return errors.ErrUnsupported }

// Close stops the stream: a Read in progress or to come fails at once (an
// expired read deadline, which breaks the request body for good), and a
// Write blocked on flow control is broken with an expired write deadline
// (HTTP/2 then resets the stream). Without a Write in progress the response
// is left alone, so that it ends cleanly when the handler returns.
func (s *StreamEnd) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.rc.SetReadDeadline(past)
	if s.writing.Load() {
		_ = s.rc.SetWriteDeadline(past)
	}
	return err
}

// past is a deadline that has certainly expired (net/http's HTTP/2 server
// acts on a deadline at once only if it is strictly before now).
var past = time.Unix(1, 0)
