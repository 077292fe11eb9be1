package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// mosquittoConf configures Mosquitto as keyfleet needs an external broker:
// TLS with required client certificates from the fleet CA, the certificate's
// CN as the user name, and the ACL the embedded broker enforces, written as
// Mosquitto patterns (%u is the CN, which is the device id).
const mosquittoConf = `user %[6]s
per_listener_settings false
allow_anonymous false
listener %[1]d 127.0.0.1
cafile %[2]s
certfile %[3]s
keyfile %[4]s
require_certificate true
use_identity_as_username true
acl_file %[5]s
max_packet_size 4352
max_inflight_messages 1000
max_queued_messages 10000
persistence false
log_dest stderr
log_type error
log_type warning
`

const mosquittoACL = `user fleetd
topic readwrite kf/#

pattern write kf/d/%u/up
pattern read kf/d/%u/down
pattern read kf/b/#
`

// currentUser keeps Mosquitto, when started as root, from switching to its
// own user, who could not read the test's private files.
func currentUser(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func mosquittoPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/bin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Fatal("mosquitto not installed: run `make test`, which installs it (apt-get install mosquitto)")
	}
	return p
}

// fleetd with Mosquitto instead of its embedded broker: the same engine
// code path rotates devices through a broker it does not control.
func TestRotationThroughMosquitto(t *testing.T) {
	const n = 5
	f := fleettest.InitFleet(t, nil)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p := datadir.Paths{Dir: f.Config.DataDir}
	acl := filepath.Join(dir, "acl")
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(acl, []byte(mosquittoACL), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(mosquittoConf, port, p.CACert(), p.ServerCert(), p.ServerKey(), acl, currentUser(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, nil, mosquittoPath(t), "-c", conf)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	eventually(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	f.Config.ExternalBroker = addr
	f.Restart(t)
	if f.Broker() != nil {
		t.Fatal("embedded broker started despite ExternalBroker")
	}
	var dirs []string
	for i := 0; i < n; i++ {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("mq-%d", i)))
	}
	runAgents(t, dirs, nil)
	ctx := context.Background()
	for _, v := range []uint32{2, 3} {
		if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, fmt.Sprintf("all at v%d through Mosquitto", v), allAt(t, f.Admin, n, v))
	}
	// fleetd cannot see Mosquitto's sessions: device show says so.
	if d, err := f.Admin.Device(ctx, "mq-0"); err != nil || d.Connection != adminapi.ConnectionUnknown {
		t.Errorf("device show through Mosquitto: connection %q, %v; want %q", d.Connection, err, adminapi.ConnectionUnknown)
	}
	// Mosquitto enforces the same ACL: a device that subscribes to another
	// device's commands gets none of them (Mosquitto 2.0 grants the
	// subscription and refuses each delivery).
	ks, err := device.OpenKeystore(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(3)
	if err != nil {
		t.Fatal(err)
	}
	var topics protocol.Topics
	var leaked atomic.Int32
	c, err := mqttc.Dial(ctx, mqttc.Options{Broker: addr, ClientID: "mq-0-probe", Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
		Subscriptions: []string{topics.Down("mq-1")},
		OnMessage:     func(string, []byte) { leaked.Add(1) },
	})
	if err != nil && !errors.Is(err, mqttc.ErrDenied) {
		t.Fatal(err)
	}
	if c != nil {
		defer c.Close()
	}
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"mq-1"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "mq-1 at v4", func() bool { return activeVersions(t, f.Admin)["mq-1"] == 4 })
	if n := leaked.Load(); n != 0 {
		t.Errorf("another device received %d of mq-1's commands through Mosquitto", n)
	}
	if got := issuedOnce(t, f.Store()); got != 2*n+1 {
		t.Errorf("issued: got %d, want %d", got, 2*n+1)
	}
}
