package integration

// TLS clients for the gateway's HTTPS port: raw handshakes and HTTP/1.1,
// HTTP/2 and HTTP/3 transports that dial 127.0.0.1 whatever the URL's host,
// present a chosen SNI and trust only the given roots.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// handshake dials addr and completes a TLS handshake with sni. With roots nil
// the server's certificate is not verified (to see whether the server itself
// refuses the handshake).
func handshake(addr, sni string, roots *x509.CertPool, timeout time.Duration) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg := &tls.Config{ServerName: sni, RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}
	if roots == nil {
		cfg.InsecureSkipVerify = true
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState(), nil
}

// waitCert polls until the gateway completes a verified handshake for sni,
// failing the test after certWait or if the gateway exits.
func waitCert(t testing.TB, g *tlsGateway, sni string, roots *x509.CertPool) tls.ConnectionState {
	t.Helper()
	return waitCertWithin(t, g, sni, roots, certWait)
}

// waitCertWithin is waitCert with its own bound.
func waitCertWithin(t testing.TB, g *tlsGateway, sni string, roots *x509.CertPool, d time.Duration) tls.ConnectionState {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		cs, err := handshake(g.HTTPSAddr(), sni, roots, 5*time.Second)
		if err == nil {
			return cs
		}
		if g.Exited() {
			t.Fatalf("gateway exited (code %d) while waiting for a certificate for %s: last handshake error: %v",
				g.Cmd.ProcessState.ExitCode(), sni, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verified TLS handshake for %s on %s within %v: last error: %v", sni, g.HTTPSAddr(), d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkChain asserts the handshake presented a leaf for name that chains to root.
func checkChain(t testing.TB, cs tls.ConnectionState, name string, root *x509.Certificate) *x509.Certificate {
	t.Helper()
	if len(cs.PeerCertificates) == 0 {
		t.Fatalf("%s: no peer certificates", name)
	}
	leaf := cs.PeerCertificates[0]
	if err := leaf.VerifyHostname(name); err != nil {
		t.Errorf("%s: leaf certificate (names %v) does not cover the name: %v", name, leaf.DNSNames, err)
	}
	if len(cs.VerifiedChains) == 0 {
		t.Fatalf("%s: no verified chain", name)
	}
	chain := cs.VerifiedChains[0]
	if got := chain[len(chain)-1]; !got.Equal(root) {
		t.Errorf("%s: chain ends at %q, want Pebble's root %q", name, got.Subject, root.Subject)
	}
	if cs.Version < tls.VersionTLS12 {
		t.Errorf("%s: negotiated TLS version %#x, want 1.2 or later", name, cs.Version)
	}
	return leaf
}

// tlsTransport maps every dial to 127.0.0.1:port and presents sni.
func tlsTransport(port int, sni string, roots *x509.CertPool, h2 bool) *http.Transport {
	target := fmt.Sprintf("127.0.0.1:%d", port)
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, target)
		},
		TLSClientConfig:       &tls.Config{ServerName: sni, RootCAs: roots},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return tr
}

// httpsGet fetches url with rt; host, if set, overrides the Host header.
func httpsGet(t testing.TB, rt http.RoundTripper, url, host string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{Transport: rt, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %q): %v", url, host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, string(body)
}

// h3Transport is an HTTP/3 client that dials 127.0.0.1:port over QUIC.
func h3Transport(t testing.TB, port int, sni string, roots *x509.CertPool) *http3.Transport {
	target := fmt.Sprintf("127.0.0.1:%d", port)
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{ServerName: sni, RootCAs: roots},
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: 5 * time.Second, MaxIdleTimeout: 10 * time.Second},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, target, tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}
