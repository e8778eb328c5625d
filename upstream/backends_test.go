package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-proxy/gatehouse/edge/config"
)

func TestH2CBackend(t *testing.T) {
	t.Parallel()
	backend := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetHTTP1(true)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	t.Cleanup(backend.Close)

	h2cURL := strings.Replace(backend.URL, "http://", "h2c://", 1)
	front := serveProxy(t, NewProxy(newTestPool(t, nil, h2cURL), quietOptions()))
	res, err := front.Client().Post(front.URL+"/h2c?q=1", "text/plain", strings.NewReader("over h2c"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got := decodeSeen(t, res.Body)
	if got.Proto != "HTTP/2.0" {
		t.Errorf("backend saw %s, want HTTP/2.0", got.Proto)
	}
	if got.Body != "over h2c" || got.URI != "/h2c?q=1" {
		t.Errorf("backend got %q %q", got.URI, got.Body)
	}
}

func TestHTTPSBackend(t *testing.T) {
	t.Parallel()
	backend := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	backend.Config.ErrorLog = log.New(io.Discard, "", 0) // expected handshake failures
	backend.StartTLS()
	t.Cleanup(backend.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: backend.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tls  config.UpstreamTLS
		want int
	}{
		{"CA file", config.UpstreamTLS{CA: caFile}, http.StatusOK},
		{"CA file and server name", config.UpstreamTLS{CA: caFile, ServerName: "example.com"}, http.StatusOK},
		{"wrong server name", config.UpstreamTLS{CA: caFile, ServerName: "other.test"}, http.StatusBadGateway},
		{"system roots do not know the CA", config.UpstreamTLS{}, http.StatusBadGateway},
		{"insecure skip verify", config.UpstreamTLS{InsecureSkipVerify: true}, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := newTestPool(t, func(u *config.Upstream) { u.TLS = tc.tls }, backend.URL)
			rec := httptest.NewRecorder()
			NewProxy(pool, quietOptions()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/tls", nil))
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
			if tc.want != http.StatusOK {
				if strings.Contains(rec.Body.String(), "127.0.0.1") || strings.Contains(rec.Body.String(), "x509") {
					t.Errorf("body leaks details: %q", rec.Body)
				}
				return
			}
			if got := decodeSeen(t, rec.Body); got.Host != "example.com" || got.URI != "/tls" {
				t.Errorf("backend saw host %q uri %q", got.Host, got.URI)
			}
		})
	}
}

func TestExpectContinue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		reject    bool
		wantCode  int
		want100   bool
		wantBody  string
		wantReads bool
	}{
		{"backend reads the body", false, http.StatusOK, true, "big upload", true},
		{"backend rejects before the body", true, http.StatusForbidden, false, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var bodyRead atomic.Bool
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.reject {
					http.Error(w, "no", http.StatusForbidden)
					return
				}
				bodyRead.Store(true)
				echo(w, r)
			}))
			t.Cleanup(backend.Close)
			front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))

			client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 60e9}}
			t.Cleanup(client.CloseIdleConnections)
			var got100 atomic.Bool
			var sent atomic.Bool
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got100Continue: func() { got100.Store(true) },
			})
			body := &trackReader{r: strings.NewReader("big upload"), read: &sent}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, front.URL+"/upload", body)
			req.ContentLength = int64(len("big upload"))
			req.Header.Set("Expect", "100-continue")
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.wantCode)
			}
			if got100.Load() != tc.want100 {
				t.Errorf("client got 100 Continue: %v, want %v", got100.Load(), tc.want100)
			}
			if tc.wantBody != "" {
				if got := decodeSeen(t, res.Body); got.Body != tc.wantBody {
					t.Errorf("backend body %q", got.Body)
				}
			}
			if !tc.want100 && sent.Load() {
				t.Error("client sent the body although the backend refused it")
			}
			if bodyRead.Load() != tc.wantReads {
				t.Errorf("backend read the body: %v", bodyRead.Load())
			}
		})
	}
}

type trackReader struct {
	r    io.Reader
	read *atomic.Bool
}

func (t *trackReader) Read(p []byte) (int, error) {
	t.read.Store(true)
	return t.r.Read(p)
}

// patternReader yields n bytes of a fixed pattern without allocating.
type patternReader struct{ n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	p.n -= int64(len(b))
	return len(b), nil
}

// TestStreamingDoesNotBuffer moves a large body each way through the proxy
// and checks that the process allocated far less than the body size. It is
// not parallel, so that other tests' allocations do not count.
func TestStreamingDoesNotBuffer(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 128 MiB")
	}
	const size = 64 << 20
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			if n != size {
				http.Error(w, "short body", http.StatusBadRequest)
				return
			}
			w.Write(h.Sum(nil))
			return
		}
		io.Copy(w, &patternReader{n: size}) // unknown length: chunked
	}))
	t.Cleanup(backend.Close)
	front := serveProxy(t, NewProxy(newTestPool(t, nil, backend.URL), quietOptions()))

	want := sha256.New()
	io.Copy(want, &patternReader{n: size})
	wantSum := string(want.Sum(nil))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	res, err := front.Client().Post(front.URL+"/up", "application/octet-stream", &patternReader{n: size})
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(sum) != wantSum {
		t.Fatalf("upload: status %d, checksum mismatch", res.StatusCode)
	}

	res, err = front.Client().Get(front.URL + "/down")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, res.Body)
	res.Body.Close()
	if err != nil || n != size || string(h.Sum(nil)) != wantSum {
		t.Fatalf("download: %d bytes, err %v, checksum match %v", n, err, string(h.Sum(nil)) == wantSum)
	}

	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
		t.Errorf("allocated %d MiB moving 2×%d MiB: the body is being buffered", alloc>>20, size>>20)
	} else {
		t.Logf("allocated %d KiB moving 2×%d MiB", alloc>>10, size>>20)
	}
}
