package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	bigSize  = 200 << 20 // bytes moved through the gateway by the big-body tests
	rssLimit = 100 << 20 // the gateway's peak RSS must stay below this
)

// TestSSEIsNotBuffered proves that each server-sent event reaches the
// client as soon as the backend flushes it: the backend sends event 1 and
// then waits until the client confirms it got it.
func TestSSEIsNotBuffered(t *testing.T) {
	t.Parallel()
	const events = 5
	gotFirst := make(chan struct{})
	var confirmOnce sync.Once
	confirm := func() { confirmOnce.Do(func() { close(gotFirst) }) }
	t.Cleanup(confirm)
	var backendGaveUp atomic.Bool
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		fmt.Fprintf(w, "id: 1\ndata: event 1\n\n")
		rc.Flush()
		select {
		case <-gotFirst:
		case <-r.Context().Done():
			return
		case <-time.After(5 * time.Second):
			backendGaveUp.Store(true)
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 2; i <= events; i++ {
			<-tick.C
			fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
			rc.Flush()
		}
	})
	g := startGateway(t, GatewayConfig{Body: fmt.Sprintf(`
sites:
  - hosts: [sse.test]
    tls: off
    routes:
      - path: /events
        upstream: [%s]
`, be.URL)})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", g.BaseURL+"/events", nil)
	req.Host = "sse.test"
	req.Header.Set("Accept", "text/event-stream")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatalf("GET /events: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET /events = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	var got []string
	for len(got) < events {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading events after %v: %v", got, err)
		}
		if data, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "data: "); ok {
			got = append(got, data)
			if len(got) == 1 {
				if backendGaveUp.Load() {
					t.Errorf("event 1 reached the client only after the backend waited 5s: the gateway buffers text/event-stream")
				}
				confirm()
			}
		}
	}
	for i, d := range got {
		if want := "event " + strconv.Itoa(i+1); d != want {
			t.Errorf("event %d = %q, want %q", i+1, d, want)
		}
	}
}

// genBlock is 1 MiB of fixed pseudo-random bytes shared by all generators.
var genBlock = sync.OnceValue(func() []byte {
	b := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'g', 'a', 't', 'e', 'h', 'o', 'u', 's', 'e'})
	r.Read(b)
	return b
})

// genReader yields n deterministic bytes: genBlock repeated, each copy
// stamped with its index so reordered or repeated blocks change the hash.
// It hashes what it hands out.
type genReader struct {
	left  int64
	idx   uint64
	cur   []byte // unread part of the current stamped block
	block []byte
	sum   hash.Hash
}

func newGenReader(n int64) *genReader {
	return &genReader{left: n, block: make([]byte, 1<<20), sum: sha256.New()}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if len(g.cur) == 0 {
		copy(g.block, genBlock())
		binary.BigEndian.PutUint64(g.block, g.idx)
		g.idx++
		g.cur = g.block
	}
	n := copy(p, g.cur)
	if int64(n) > g.left {
		n = int(g.left)
	}
	g.cur = g.cur[n:]
	g.left -= int64(n)
	g.sum.Write(p[:n])
	return n, nil
}

func (g *genReader) Hex() string { return hex.EncodeToString(g.sum.Sum(nil)) }

// transferResult is what a big-body backend reports.
type transferResult struct {
	N    int64
	Hash string
	Err  string
}

// TestBigUploadStreams pushes 200 MiB of unknown length through the gateway
// and checks the backend got every byte while the gateway stayed small.
func TestBigUploadStreams(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		res := transferResult{N: n, Hash: hex.EncodeToString(h.Sum(nil))}
		if err != nil {
			res.Err = err.Error()
		}
		json.NewEncoder(w).Encode(res)
	})
	g := startGateway(t, GatewayConfig{Body: bigSite(be.URL)})

	gen := newGenReader(bigSize)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "PUT", g.BaseURL+"/upload", io.NopCloser(gen))
	req.Host = "big.test"
	req.ContentLength = -1 // streamed: chunked on the wire
	start := time.Now()
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatalf("PUT 200 MiB: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	t.Logf("upload of %d MiB took %v", bigSize>>20, time.Since(start))
	if resp.StatusCode != 200 {
		t.Fatalf("PUT /upload = %d %q", resp.StatusCode, raw)
	}
	var res transferResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("backend answer %q: %v", raw, err)
	}
	if res.Err != "" || res.N != bigSize || res.Hash != gen.Hex() {
		t.Errorf("backend received %d bytes (err %q) sha256 %s; sent %d bytes sha256 %s",
			res.N, res.Err, res.Hash, bigSize, gen.Hex())
	}
	assertPeakRSS(t, g)
}

// TestBigDownloadStreams pulls 200 MiB generated by the backend through the
// gateway and checks every byte arrived while the gateway stayed small.
func TestBigDownloadStreams(t *testing.T) {
	t.Parallel()
	sent := make(chan string, 1)
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		gen := newGenReader(bigSize)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(bigSize))
		if _, err := io.Copy(w, gen); err != nil {
			sent <- "error: " + err.Error()
			return
		}
		sent <- gen.Hex()
	})
	g := startGateway(t, GatewayConfig{Body: bigSite(be.URL)})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", g.BaseURL+"/download", nil)
	req.Host = "big.test"
	start := time.Now()
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatalf("GET 200 MiB: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /download = %d", resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	t.Logf("download of %d MiB took %v", bigSize>>20, time.Since(start))
	if err != nil {
		t.Fatalf("reading the download after %d bytes: %v", n, err)
	}
	var want string
	select {
	case want = <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("backend never finished sending")
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != bigSize || got != want {
		t.Errorf("client received %d bytes sha256 %s; backend sent %d bytes sha256 %s", n, got, bigSize, want)
	}
	assertPeakRSS(t, g)
}

func bigSite(backend string) string {
	return fmt.Sprintf(`
upstreams:
  big:
    backends:
      - url: %s
sites:
  - hosts: [big.test]
    tls: off
    routes:
      - path: /
        upstream: big
`, backend)
}

func assertPeakRSS(t *testing.T, g *Gateway) {
	t.Helper()
	peak := g.VmHWM()
	t.Logf("gateway peak RSS (VmHWM) %.1f MiB", float64(peak)/(1<<20))
	if peak >= rssLimit {
		t.Errorf("gateway peak RSS %.1f MiB, want under %d MiB: bodies are buffered, not streamed",
			float64(peak)/(1<<20), rssLimit>>20)
	}
}
