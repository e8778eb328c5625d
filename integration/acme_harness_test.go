package integration

// Test peers for the TLS tests: a DNS server that sends every name to
// 127.0.0.1, an in-process Pebble ACME CA doing real HTTP-01 and TLS-ALPN-01
// validation against the gateway, an on-demand "ask" server, and a gateway
// handle that can be restarted on the same config and data_dir.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// certWait bounds how long a test waits for a certificate to be served.
const certWait = 30 * time.Second

// ---------------------------------------------------------------- ports

// freeTCPUDPPort returns a loopback port free for both TCP and UDP a moment
// ago (https_port serves h1/h2 on TCP and h3 on UDP with the same number).
func freeTCPUDPPort(t testing.TB) int {
	t.Helper()
	return pickPort(t, "TCP+UDP", func(port int) bool {
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return false
		}
		pc.Close()
		return true
	})
}

// ---------------------------------------------------------------- DNS

// startDNS serves A 127.0.0.1 for every name and an empty NOERROR answer for
// everything else, on UDP and TCP of the same loopback port.
func startDNS(t testing.TB) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		w.WriteMsg(m)
	})
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dns: listening on tcp: %v", err)
		}
		pc, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			l.Close()
			continue
		}
		var servers []*dns.Server
		for _, s := range []*dns.Server{{Listener: l, Handler: h}, {PacketConn: pc, Handler: h}} {
			started := make(chan struct{})
			s.NotifyStartedFunc = func() { close(started) }
			go s.ActivateAndServe()
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("dns server did not start within 10s")
			}
			servers = append(servers, s)
		}
		t.Cleanup(func() {
			for _, s := range servers {
				s.Shutdown()
			}
		})
		return l.Addr().String()
	}
	t.Fatal("no port free for DNS on both TCP and UDP")
	return ""
}

// ---------------------------------------------------------------- Pebble

var (
	pebbleEnvOnce sync.Once
	pebbleDirOnce sync.Once
	pebbleDir     string
	pebbleDirErr  error
)

// pebbleModuleDir is the module directory of Pebble, which holds its test
// certificates.
func pebbleModuleDir(t testing.TB) string {
	t.Helper()
	pebbleDirOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
		pebbleDir, pebbleDirErr = strings.TrimSpace(string(out)), err
		if err == nil && pebbleDir == "" {
			pebbleDirErr = fmt.Errorf("empty module dir")
		}
	})
	if pebbleDirErr != nil {
		t.Fatalf("finding Pebble's module directory: %v", pebbleDirErr)
	}
	return pebbleDir
}

// pebbleCA is an in-process Pebble that validates challenges against the
// gateway's ports and counts what the gateway asks of it.
type pebbleCA struct {
	t          testing.TB
	DirURL     string            // ACME directory, https://127.0.0.1:PORT/dir
	CARootFile string            // PEM of the CA of Pebble's own HTTPS certificate
	Root       *x509.Certificate // issuing root, from the management /roots/0
	Roots      *x509.CertPool    // just Root
	db         *db.MemoryStore
	acme, mgmt *httptest.Server
	log        *syncBuffer

	mu         sync.Mutex
	orders     int            // POSTs to new-order
	orderNames map[string]int // identifiers named in those POSTs
	chalTypes  map[string]int // types of the challenges POSTed to
	closeOnce  sync.Once
}

// newPebble starts Pebble whose VA validates HTTP-01 on httpPort and
// TLS-ALPN-01 on tlsPort of whatever its own DNS server resolves (127.0.0.1).
func newPebble(t testing.TB, httpPort, tlsPort int) *pebbleCA {
	t.Helper()
	return newPebbleWith(t, httpPort, tlsPort, pebbleOptions{})
}

// pebbleOptions changes how newPebbleWith configures Pebble; the zero value
// is what newPebble uses.
type pebbleOptions struct {
	// RequireEAB makes new accounts need an External Account Binding with
	// a key registered through AddEABKey.
	RequireEAB bool
}

// newPebbleWith is newPebble with options.
func newPebbleWith(t testing.TB, httpPort, tlsPort int, opts pebbleOptions) *pebbleCA {
	t.Helper()
	pebbleEnvOnce.Do(func() {
		// Read by va.New and wfe.New; never PEBBLE_VA_ALWAYS_VALID.
		os.Setenv("PEBBLE_VA_NOSLEEP", "1")
		os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	})
	if os.Getenv("PEBBLE_VA_ALWAYS_VALID") != "" {
		t.Fatal("PEBBLE_VA_ALWAYS_VALID is set: these tests need real validation")
	}
	dir := pebbleModuleDir(t)
	p := &pebbleCA{t: t, log: &syncBuffer{}, orderNames: map[string]int{}, chalTypes: map[string]int{}}
	logger := log.New(p.log, "pebble ", log.Lmicroseconds)
	resolver := startDNS(t)

	p.db = db.NewMemoryStore()
	profiles := map[string]ca.Profile{"default": {Description: "default"}}
	caImpl := ca.New(logger, p.db, "", "ecdsa", 0, 1, profiles)
	vaImpl := va.New(logger, httpPort, tlsPort, false, resolver, p.db)
	w := wfe.New(logger, p.db, vaImpl, caImpl, []string{"pebble.letsencrypt.org"}, false, opts.RequireEAB, 0, 0)

	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "test/certs/localhost/cert.pem"),
		filepath.Join(dir, "test/certs/localhost/key.pem"))
	if err != nil {
		t.Fatalf("loading Pebble's test certificate: %v", err)
	}
	serve := func(h http.Handler) *httptest.Server {
		s := httptest.NewUnstartedServer(h)
		s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		s.Config.ErrorLog = log.New(p.log, "pebble-http ", log.Lmicroseconds)
		s.StartTLS()
		return s
	}
	p.acme = serve(p.watch(w.Handler()))
	p.mgmt = serve(w.ManagementHandler())
	t.Cleanup(p.Close)
	t.Cleanup(func() {
		if t.Failed() {
			out := p.log.String()
			if len(out) > 30000 {
				out = "...\n" + out[len(out)-30000:]
			}
			t.Logf("pebble log:\n%s", out)
		}
	})
	p.DirURL = "https://" + p.acme.Listener.Addr().String() + "/dir"

	minica, err := os.ReadFile(filepath.Join(dir, "test/certs/pebble.minica.pem"))
	if err != nil {
		t.Fatalf("reading pebble.minica.pem: %v", err)
	}
	p.CARootFile = filepath.Join(t.TempDir(), "pebble.minica.pem")
	if err := os.WriteFile(p.CARootFile, minica, 0o600); err != nil {
		t.Fatal(err)
	}
	p.fetchRoot(minica)
	return p
}

// AddEABKey registers an External Account Binding key: macKey is the
// unpadded base64url HMAC key, as a CA hands it out.
func (p *pebbleCA) AddEABKey(keyID, macKey string) {
	p.t.Helper()
	if err := p.db.AddExternalAccountKeyByID(keyID, macKey); err != nil {
		p.t.Fatalf("registering EAB key %q with Pebble: %v", keyID, err)
	}
}

// fetchRoot reads the issuing root from the management interface.
func (p *pebbleCA) fetchRoot(minica []byte) {
	p.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(minica)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + p.mgmt.Listener.Addr().String() + "/roots/0")
	if err != nil {
		p.t.Fatalf("fetching Pebble's root: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		p.t.Fatalf("fetching Pebble's root: status %d, err %v", resp.StatusCode, err)
	}
	block, _ := pem.Decode(body)
	if block == nil {
		p.t.Fatalf("Pebble's /roots/0 is not PEM: %q", body)
	}
	p.Root, err = x509.ParseCertificate(block.Bytes)
	if err != nil {
		p.t.Fatalf("parsing Pebble's root: %v", err)
	}
	p.Roots = x509.NewCertPool()
	p.Roots.AddCert(p.Root)
}

// watch counts new orders (and the names in them) and challenge types.
func (p *pebbleCA) watch(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			names := jwsOrderNames(body)
			p.mu.Lock()
			p.orders++
			for _, n := range names {
				p.orderNames[strings.ToLower(n)]++
			}
			p.mu.Unlock()
		}
		if id, ok := strings.CutPrefix(r.URL.Path, "/chalZ/"); ok && r.Method == http.MethodPost {
			if ch := p.db.GetChallengeByID(id); ch != nil {
				ch.RLock()
				typ := ch.Type
				ch.RUnlock()
				p.mu.Lock()
				p.chalTypes[typ]++
				p.mu.Unlock()
			}
		}
		h.ServeHTTP(w, r)
	})
}

// jwsOrderNames returns the identifier values in a flattened-JWS new-order body.
func jwsOrderNames(body []byte) []string {
	var jws struct{ Payload string }
	if json.Unmarshal(body, &jws) != nil {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(jws.Payload, "="))
	if err != nil {
		return nil
	}
	var order struct{ Identifiers []struct{ Value string } }
	if json.Unmarshal(raw, &order) != nil {
		return nil
	}
	var names []string
	for _, id := range order.Identifiers {
		names = append(names, id.Value)
	}
	return names
}

// Orders is the number of new-order requests Pebble received.
func (p *pebbleCA) Orders() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.orders
}

// OrdersFor is the number of new-order requests that named name.
func (p *pebbleCA) OrdersFor(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.orderNames[strings.ToLower(name)]
}

// OrderedNames lists every name ever ordered.
func (p *pebbleCA) OrderedNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for n := range p.orderNames {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ChallengeTypes lists the types of the challenges the client answered.
func (p *pebbleCA) ChallengeTypes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var types []string
	for typ := range p.chalTypes {
		types = append(types, typ)
	}
	slices.Sort(types)
	return types
}

// Close shuts Pebble's HTTPS servers down; connecting to it is then refused.
func (p *pebbleCA) Close() {
	p.closeOnce.Do(func() {
		p.acme.CloseClientConnections()
		p.acme.Close()
		p.mgmt.Close()
	})
}

// ---------------------------------------------------------------- ask

// askServer answers the on-demand ask endpoint: 200 for allowed names, 403
// otherwise; it records every name it was asked about.
type askServer struct {
	URL   string // http://127.0.0.1:PORT/check
	mu    sync.Mutex
	asked map[string]int
}

func newAskServer(t testing.TB, allow ...string) *askServer {
	t.Helper()
	a := &askServer{asked: map[string]int{}}
	srv := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		name := strings.ToLower(r.URL.Query().Get("domain"))
		a.mu.Lock()
		a.asked[name]++
		a.mu.Unlock()
		if r.URL.Path == "/check" && slices.Contains(allow, name) {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusForbidden)
	})
	a.URL = srv.URL + "/check"
	return a
}

// Asked is how many times name was asked about.
func (a *askServer) Asked(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.asked[strings.ToLower(name)]
}

// ---------------------------------------------------------------- gateway

// tlsGateway is a gateway serving TLS sites; unlike Gateway it can be
// stopped and started again on the same config and data_dir.
type tlsGateway struct {
	*Proc
	t          testing.TB
	ConfigPath string
	DataDir    string
	HTTPPort   int
	HTTPSPort  int
	global     string
}

// HTTPSAddr is 127.0.0.1:https_port.
func (g *tlsGateway) HTTPSAddr() string { return fmt.Sprintf("127.0.0.1:%d", g.HTTPSPort) }

// HTTPAddr is 127.0.0.1:http_port.
func (g *tlsGateway) HTTPAddr() string { return fmt.Sprintf("127.0.0.1:%d", g.HTTPPort) }

// WriteSites rewrites the config file with the same global block and sites.
func (g *tlsGateway) WriteSites(sites string) {
	g.t.Helper()
	text := globalBlock(g.HTTPPort, g.HTTPSPort, g.DataDir, g.global) + strings.TrimLeft(sites, "\n")
	if err := os.WriteFile(g.ConfigPath, []byte(text), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// Restart stops the process (if running) and starts it again on the same
// config file, waiting until http_port accepts connections.
func (g *tlsGateway) Restart() {
	g.t.Helper()
	g.Proc.Stop()
	g.Proc = startProc(g.t, nil, "run", "--config", g.ConfigPath)
	if err := g.Proc.waitListening(g.HTTPAddr()); err != nil {
		g.t.Fatal(err)
	}
}

// startACMEGateway starts a fresh Pebble and a gateway using it as its ACME
// CA with the given challenges (YAML list) and optional on-demand ask URL.
func startACMEGateway(t testing.TB, challenges, ask, sites string) (*tlsGateway, *pebbleCA) {
	t.Helper()
	g := &tlsGateway{t: t}
	var p *pebbleCA
	g.Proc = startServing(t, func() ([]string, []string, string) {
		g.HTTPPort, g.HTTPSPort = freePort(t), freeTCPUDPPort(t)
		p = newPebble(t, g.HTTPPort, g.HTTPSPort)
		dir := t.TempDir()
		g.ConfigPath, g.DataDir = filepath.Join(dir, "gatehouse.yaml"), filepath.Join(dir, "data")
		g.global = fmt.Sprintf("email: test@example.com\nacme:\n  ca: %s\n  ca_root: %q\n  challenges: %s\n",
			p.DirURL, p.CARootFile, challenges)
		if ask != "" {
			g.global += fmt.Sprintf("on_demand:\n  ask: %s\n", ask)
		}
		g.WriteSites(sites)
		return nil, []string{"run", "--config", g.ConfigPath}, g.HTTPAddr()
	})
	return g, p
}
