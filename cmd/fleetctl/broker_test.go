package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// fleetctl broker cert makes the broker's key on the operator's side and
// has fleetd's CA (key in the HSM) sign it: the certificate verifies under
// the roots it writes as ca.pem, for the names given, and the key file is
// private.
func TestBrokerCert(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	fleetctl := against(f)
	dir := filepath.Join(t.TempDir(), "broker")
	if out, errOut, status := fleetctl("broker", "cert", "--san", "broker.example", "--san", "10.1.2.3", "--out", dir); status != 0 {
		t.Fatalf("broker cert: status %d, %s%s", status, out, errOut)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "broker.pem"), filepath.Join(dir, "broker.key"))
	if err != nil {
		t.Fatalf("broker.pem and broker.key: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots, err := identity.LoadPEM(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, name := range []string{"broker.example", "10.1.2.3"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("broker certificate for %s: %v", name, err)
		}
	}
	if ip := net.ParseIP("10.1.2.4"); leaf.VerifyHostname(ip.String()) == nil {
		t.Error("broker certificate valid for a name not asked for")
	}
	if st, err := os.Stat(filepath.Join(dir, "broker.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("broker.key mode %v, %v; want 0600", st.Mode().Perm(), err)
	}

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no name", []string{"broker", "cert", "--out", dir}, "--san"},
		{"bad name", []string{"broker", "cert", "--san", "not a name", "--out", t.TempDir()}, "no DNS name or IP address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, status := fleetctl(tt.args...)
			if status != 1 || !strings.Contains(errOut, tt.want) {
				t.Errorf("status %d, stderr %q; want 1 and %q", status, errOut, tt.want)
			}
		})
	}
}

// fleetctl broker config mosquitto prints the configuration and, asked
// to, writes the plugin's first state once.
func TestBrokerConfigMosquitto(t *testing.T) {
	seed := filepath.Join(t.TempDir(), "dynsec.json")
	var fleetctl = func(args ...string) (string, string, int) {
		var out, errOut strings.Builder
		status := run(args, &out, &errOut)
		return out.String(), errOut.String(), status
	}
	out, errOut, status := fleetctl("broker", "config", "mosquitto", "--listen", "127.0.0.1:18883", "--write-dynsec", seed)
	if status != 0 {
		t.Fatalf("status %d: %s", status, errOut)
	}
	for _, want := range []string{"listener 18883 127.0.0.1", "plugin_opt_config_file /var/lib/mosquitto/keyfleet-dynsec.json",
		"require_certificate true", "use_identity_as_username true", "retain_available false", "crlfile /etc/mosquitto/keyfleet/crl.pem"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(seed); err != nil || !strings.Contains(string(b), `"username": "fleetd"`) {
		t.Errorf("seed: %v\n%s", err, b)
	}
	if _, errOut, status := fleetctl("broker", "config", "mosquitto", "--write-dynsec", seed); status != 1 || !strings.Contains(errOut, "file exists") {
		t.Errorf("second seed: status %d, %q; want a refusal to overwrite", status, errOut)
	}
}
