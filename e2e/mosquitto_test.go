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
	"github.com/keyfleet/keyfleet/server/mosquitto"
)

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

// startMosquitto runs Mosquitto with the configuration fleetctl broker
// config mosquitto generates (the dynamic-security plugin seeded for
// fleetd, retained publishes off), fleetd's certificate as the broker's,
// and returns its address once it listens.
func startMosquitto(t *testing.T, f *fleettest.Fleet) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := datadir.Paths{Dir: f.Config.DataDir}
	conf, err := mosquitto.Config(mosquitto.ConfigOptions{Listen: addr, CAFile: p.CACert(), CertFile: p.ServerCert(),
		KeyFile: p.ServerKey(), DynsecFile: filepath.Join(dir, "dynamic-security.json"), User: currentUser(t)})
	if err != nil {
		t.Fatal(err)
	}
	seed, err := mosquitto.SeedFile(f.Config.Topics)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dynamic-security.json"), seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, nil, mosquittoPath(t), "-c", filepath.Join(dir, "mosquitto.conf"))
	eventually(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// fleetd with Mosquitto instead of its embedded broker: the same engine
// code path rotates devices through a broker it does not control, only
// keeps in step (mosquitto://).
func TestRotationThroughMosquitto(t *testing.T) {
	const n = 5
	f := fleettest.InitFleet(t, nil)
	addr := startMosquitto(t, f)
	f.Config.ExternalBroker = mosquitto.Scheme + addr
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
