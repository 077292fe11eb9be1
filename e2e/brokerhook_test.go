package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
)

// An EMQX-style broker asks fleetd's admin listener, with the certificate
// fleetctl broker cert issued it, whether a device may connect and use a
// topic. EMQX itself cannot be installed here (no Debian package, no
// network), so the requests are shaped as EMQX 5's HTTP authenticator and
// authorizer send them with the body templates docs/operations.md gives.
// The broker's certificate opens the hooks and nothing else; a revocation
// holds from the next request.
func TestBrokerHooksOverAdminListener(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	f.AddDevice(t, "dev-a")
	f.AddDevice(t, "dev-b")
	dir := brokerCert(t, f.Admin, "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "broker.pem"), filepath.Join(dir, "broker.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("ca.pem: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "127.0.0.1"}}}
	call := func(path string, body map[string]any) (int, string) {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := hc.Post("https://"+f.AdminAddr()+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Result string `json:"result"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Result
	}
	authz := func(device, topic, action, retain string) string {
		t.Helper()
		code, res := call(adminapi.PathBrokerAuthz, map[string]any{"clientid": device, "username": device, "peerhost": "10.0.0.9",
			"topic": topic, "action": action, "qos": "1", "retain": retain})
		if code != http.StatusOK {
			t.Fatalf("authz: status %d", code)
		}
		return res
	}
	if code, res := call(adminapi.PathBrokerAuthn, map[string]any{"clientid": "dev-a", "username": "dev-a", "password": "",
		"peerhost": "10.0.0.9", "cert_common_name": "dev-a"}); code != http.StatusOK || res != "allow" {
		t.Errorf("authn dev-a: %d %q, want 200 allow", code, res)
	}
	for _, tt := range []struct{ device, topic, action, retain, want string }{
		{"dev-a", "kf/d/dev-a/up", "publish", "false", "allow"},
		{"dev-a", "kf/d/dev-b/up", "publish", "false", "deny"},
		{"dev-a", "kf/d/dev-b/down", "subscribe", "false", "deny"},
		{"dev-a", "kf/d/dev-a/up", "publish", "true", "deny"},
	} {
		if got := authz(tt.device, tt.topic, tt.action, tt.retain); got != tt.want {
			t.Errorf("%s %s %s retain=%s: %q, want %q", tt.device, tt.action, tt.topic, tt.retain, got, tt.want)
		}
	}
	if _, err := f.Admin.Revoke(ctx, "dev-a", "hook test"); err != nil {
		t.Fatal(err)
	}
	if got := authz("dev-a", "kf/d/dev-a/up", "publish", "false"); got != "deny" {
		t.Errorf("revoked dev-a publishing its uplink: %q, want deny", got)
	}
	// A device may not take fleetd's or a broker's name: the hooks (and
	// Mosquitto) know clients by their certificate's CN alone.
	for _, id := range []string{"fleetd", "broker"} {
		_, err := provision.Device(ctx, f.Admin, id, filepath.Join(t.TempDir(), id), "")
		var apiErr *client.APIError
		if !errors.As(err, &apiErr) || apiErr.Code != adminapi.CodeInvalid {
			t.Errorf("registering a device %q: %v, want the API's %q", id, err, adminapi.CodeInvalid)
		}
	}
	// The broker's certificate is no operator's.
	resp, err := hc.Get("https://" + f.AdminAddr() + adminapi.PathDevices)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("device list with the broker's certificate: status %d, want 403", resp.StatusCode)
	}
}
