package integration

// A small HTTP/2 client written with x/net/http2's Framer and hpack, for the
// RFC 8441 extended-CONNECT tests: it shows the server's SETTINGS as sent on
// the wire and lets a test drive several WebSocket streams at once.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client is one HTTP/2 connection.
type h2Client struct {
	t        testing.TB
	conn     *tls.Conn
	fr       *http2.Framer
	wmu      sync.Mutex // guards fr's writes, henc and hbuf
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	Settings map[http2.SettingID]uint32 // the server's first SETTINGS frame

	mu      sync.Mutex
	streams map[uint32]*h2Stream
	goAway  *http2.GoAwayFrame
	readErr error
	done    chan struct{} // closed when the read loop ends
}

// h2Stream is one stream's response as the client saw it.
type h2Stream struct {
	ID      uint32
	headers chan []hpack.HeaderField // the response HEADERS (first one only)
	data    chan []byte
	end     chan struct{} // closed on END_STREAM, RST_STREAM or connection end
	endOnce sync.Once

	mu     sync.Mutex
	reset  *http2.ErrCode
	endWhy string
	buf    []byte // data taken from the channel, not yet read
}

// dialH2 starts HTTP/2 on conn: it writes the connection preface and
// SETTINGS, reads the server's SETTINGS, and starts reading frames.
func dialH2(t testing.TB, conn *tls.Conn) *h2Client {
	t.Helper()
	c := &h2Client{t: t, conn: conn, streams: map[uint32]*h2Stream{}, done: make(chan struct{})}
	c.fr = http2.NewFramer(conn, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(65536, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.henc = hpack.NewEncoder(&c.hbuf)

	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatalf("h2: writing the client preface: %v", err)
	}
	if err := c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 24},
	); err != nil {
		t.Fatalf("h2: writing SETTINGS: %v", err)
	}
	if err := c.fr.WriteWindowUpdate(0, 1<<30); err != nil {
		t.Fatalf("h2: writing WINDOW_UPDATE: %v", err)
	}
	// The server's first frame must be its SETTINGS (RFC 9113 3.4).
	f, err := c.fr.ReadFrame()
	if err != nil {
		t.Fatalf("h2: reading the server's SETTINGS: %v", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		t.Fatalf("h2: the server's first frame is %v, want SETTINGS", f.Header())
	}
	c.Settings = map[http2.SettingID]uint32{}
	sf.ForeachSetting(func(s http2.Setting) error {
		c.Settings[s.ID] = s.Val
		return nil
	})
	if err := c.fr.WriteSettingsAck(); err != nil {
		t.Fatalf("h2: writing SETTINGS ack: %v", err)
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop()
	t.Cleanup(func() {
		conn.Close()
		<-c.done
	})
	return c
}

func (c *h2Client) readLoop() {
	defer close(c.done)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			for _, s := range c.streams {
				s.finish("connection ended: " + err.Error())
			}
			c.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.GoAwayFrame:
			c.mu.Lock()
			c.goAway = f
			c.mu.Unlock()
		case *http2.MetaHeadersFrame:
			if s := c.stream(f.StreamID); s != nil {
				select {
				case s.headers <- f.Fields:
				default: // trailers or a second HEADERS: ignored
				}
				if f.StreamEnded() {
					s.finish("END_STREAM on HEADERS")
				}
			}
		case *http2.DataFrame:
			if s := c.stream(f.StreamID); s != nil {
				if n := len(f.Data()); n > 0 {
					s.data <- bytes.Clone(f.Data())
				}
				if f.StreamEnded() {
					s.finish("END_STREAM")
				}
			}
			if n := f.Length; n > 0 {
				c.write(func() error {
					if err := c.fr.WriteWindowUpdate(0, n); err != nil || f.StreamEnded() {
						return err
					}
					return c.fr.WriteWindowUpdate(f.StreamID, n)
				})
			}
		case *http2.RSTStreamFrame:
			if s := c.stream(f.StreamID); s != nil {
				s.mu.Lock()
				code := f.ErrCode
				s.reset = &code
				s.mu.Unlock()
				s.finish("RST_STREAM " + code.String())
			}
		}
	}
}

func (c *h2Client) write(fn func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return fn()
}

func (c *h2Client) stream(id uint32) *h2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// Connect opens stream id with an extended CONNECT for a WebSocket on path;
// extra are more header fields (lower-case names).
func (c *h2Client) Connect(id uint32, authority, path string, extra ...hpack.HeaderField) *h2Stream {
	c.t.Helper()
	fields := append([]hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":protocol", Value: "websocket"},
		{Name: ":scheme", Value: "https"},
		{Name: ":path", Value: path},
		{Name: ":authority", Value: authority},
		{Name: "sec-websocket-version", Value: "13"},
	}, extra...)
	return c.open(id, fields, false)
}

// open opens stream id with any header list; endStream ends it at once.
func (c *h2Client) open(id uint32, fields []hpack.HeaderField, endStream bool) *h2Stream {
	c.t.Helper()
	s := &h2Stream{ID: id, headers: make(chan []hpack.HeaderField, 1), data: make(chan []byte, 4096), end: make(chan struct{})}
	c.mu.Lock()
	c.streams[id] = s
	c.mu.Unlock()
	err := c.write(func() error {
		c.hbuf.Reset()
		for _, f := range fields {
			if err := c.henc.WriteField(f); err != nil {
				return err
			}
		}
		return c.fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true, EndStream: endStream,
		})
	})
	if err != nil {
		c.t.Fatalf("h2: writing HEADERS on stream %d: %v", id, err)
	}
	return s
}

// Send writes p as DATA on stream s.
func (c *h2Client) Send(s *h2Stream, p []byte, endStream bool) error {
	return c.write(func() error { return c.fr.WriteData(s.ID, endStream, p) })
}

// Reset sends RST_STREAM CANCEL on s.
func (c *h2Client) Reset(s *h2Stream) error {
	return c.write(func() error { return c.fr.WriteRSTStream(s.ID, http2.ErrCodeCancel) })
}

// GoAway is the GOAWAY frame the server sent, if any.
func (c *h2Client) GoAway() *http2.GoAwayFrame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goAway
}

func (s *h2Stream) finish(why string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.endWhy = why
		s.mu.Unlock()
		close(s.end)
	})
}

// Ended reports whether the stream ended and why.
func (s *h2Stream) Ended() (bool, string) {
	select {
	case <-s.end:
		s.mu.Lock()
		defer s.mu.Unlock()
		return true, s.endWhy
	default:
		return false, ""
	}
}

// Response waits up to d for the response HEADERS and returns the fields.
func (s *h2Stream) Response(t testing.TB, d time.Duration) []hpack.HeaderField {
	t.Helper()
	select {
	case h := <-s.headers:
		return h
	case <-time.After(d):
	}
	// Headers may race with the end of the stream.
	select {
	case h := <-s.headers:
		return h
	default:
	}
	_, why := s.Ended()
	t.Fatalf("h2 stream %d: no response HEADERS within %v (stream end: %q)", s.ID, d, why)
	return nil
}

// readFull reads len(p) bytes of DATA within the deadline.
func (s *h2Stream) readFull(p []byte, deadline time.Time) error {
	for n := 0; n < len(p); {
		s.mu.Lock()
		if len(s.buf) > 0 {
			k := copy(p[n:], s.buf)
			s.buf = s.buf[k:]
			n += k
			s.mu.Unlock()
			continue
		}
		s.mu.Unlock()
		timer := time.NewTimer(time.Until(deadline))
		select {
		case b := <-s.data:
			timer.Stop()
			s.mu.Lock()
			s.buf = append(s.buf, b...)
			s.mu.Unlock()
		case <-s.end:
			timer.Stop()
			select {
			case b := <-s.data:
				s.mu.Lock()
				s.buf = append(s.buf, b...)
				s.mu.Unlock()
				continue
			default:
			}
			_, why := s.Ended()
			return fmt.Errorf("stream ended (%s) after %d of %d bytes: %w", why, n, len(p), io.ErrUnexpectedEOF)
		case <-timer.C:
			return fmt.Errorf("no data within the deadline (%d of %d bytes): %w", n, len(p), os.ErrDeadlineExceeded)
		}
	}
	return nil
}

// ReadFrame reads one WebSocket frame from the stream's DATA.
func (s *h2Stream) ReadFrame(d time.Duration) (fin bool, op byte, payload []byte, err error) {
	return wsReadFrame(&h2StreamReader{s: s, deadline: time.Now().Add(d)})
}

type h2StreamReader struct {
	s        *h2Stream
	deadline time.Time
}

func (r *h2StreamReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := r.s.readFull(p[:1], r.deadline); err != nil {
		return 0, err
	}
	// Then whatever is buffered, without blocking.
	r.s.mu.Lock()
	k := copy(p[1:], r.s.buf)
	r.s.buf = r.s.buf[k:]
	r.s.mu.Unlock()
	return 1 + k, nil
}

// field returns the value of name in fields and how many times it occurs.
func field(fields []hpack.HeaderField, name string) (string, int) {
	var v string
	n := 0
	for _, f := range fields {
		if f.Name == name {
			if n == 0 {
				v = f.Value
			}
			n++
		}
	}
	return v, n
}

// fieldsString renders fields for messages.
func fieldsString(fields []hpack.HeaderField) string {
	var parts []string
	for _, f := range fields {
		parts = append(parts, f.Name+": "+f.Value)
	}
	return "[" + strings.Join(parts, "; ") + "]"
}
