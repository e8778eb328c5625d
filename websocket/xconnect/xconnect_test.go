// An external test package: the package's own test files importing
// net/http would make net/http initialise first (it would become a
// dependency of the package under test), which is exactly what must not
// happen.
package xconnect_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gatehouse-proxy/gatehouse/websocket/xconnect"
)

// TestAdvertised checks the point of the package: net/http's HTTP/2
// server, initialised after this package, sends
// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (or 0 when the operator said so).
func TestAdvertised(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	fr.WriteSettings()
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	v, _ := f.(*http2.SettingsFrame).Value(http2.SettingEnableConnectProtocol)
	if want := xconnect.Enabled(); (v == 1) != want {
		t.Fatalf("ENABLE_CONNECT_PROTOCOL = %d with Enabled() = %v (GODEBUG %q)", v, want, os.Getenv("GODEBUG"))
	}
	if os.Getenv("XCONNECT_CHILD") == "" && v != 1 {
		t.Fatal("not advertised by default")
	}
}

// TestGODEBUG runs this test binary again with various GODEBUG values.
func TestGODEBUG(t *testing.T) {
	if os.Getenv("XCONNECT_CHILD") != "" {
		t.Skip("child")
	}
	tests := []struct{ env, want string }{
		{"", "http2xconnect=1"},
		{"madvdontneed=1", "madvdontneed=1,http2xconnect=1"},
		{"http2xconnect=0", "http2xconnect=0"}, // the operator's choice stands
	}
	for _, tc := range tests {
		cmd := exec.Command(os.Args[0], "-test.run=^(TestAdvertised|TestPrintGODEBUG)$", "-test.v")
		cmd.Env = append(os.Environ(), "XCONNECT_CHILD=1", "GODEBUG="+tc.env)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v\n%s", tc.env, err, out)
		}
		if !strings.Contains(string(out), "GODEBUG=["+tc.want+"]") {
			t.Errorf("GODEBUG=%q became something else than %q:\n%s", tc.env, tc.want, out)
		}
	}
}

func TestPrintGODEBUG(t *testing.T) {
	t.Logf("GODEBUG=[%s]", os.Getenv("GODEBUG"))
}
