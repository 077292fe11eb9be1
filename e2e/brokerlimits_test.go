package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
)

// TestRetainedUplinkRefused: a device publishing to its own up topic with
// the retain flag is refused and disconnected (acl:retain); the message
// reaches neither fleetd nor the broker's retained store.
func TestRetainedUplinkRefused(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	r := newRogue(t, f, f.AddDevice(t, "sticky"), 1)
	hello := r.seal(&protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}}, r.key(1))
	before := f.Engine().Stats().Uplinks
	err := r.conn.PublishRetained(context.Background(), r.topic.Up(r.id), hello)
	if err == nil {
		t.Error("retained publish acknowledged, want the connection dropped")
	}
	eventually(t, 5*time.Second, "acl:retain denial", func() bool { return f.Broker().Denials.Snapshot()["acl:retain"] == 1 })
	eventually(t, 5*time.Second, "sticky disconnected", func() bool { return !r.conn.Connected() })
	// The same message without the flag, on a new connection, goes through:
	// the refusal was the flag's.
	c := r.dial(f, 1, []string{r.topic.Down(r.id)})
	defer c.Close()
	if err := c.Publish(context.Background(), r.topic.Up(r.id), hello); err != nil {
		t.Fatalf("plain publish: %v", err)
	}
	eventually(t, 5*time.Second, "the plain hello handled", func() bool { return f.Engine().Stats().Uplinks == before+1 })
	if n := f.Broker().Retained(r.topic.Up(r.id)); n != 0 {
		t.Errorf("retained messages on the up topic: %d, want 0", n)
	}
}

// TestForeignClientCertRefusedInHandshake: a client certificate that chains
// to none of the fleet's CAs does not get past the TLS handshake; the auth
// hook never sees it.
func TestForeignClientCertRefusedInHandshake(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	dir := f.AddDevice(t, "dev-1")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A self-signed certificate that claims to be dev-1, with the URI a
	// real identity carries.
	k, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	self, err := certs.NewRoot(k, "dev-1", time.Now().Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cred := tls.Certificate{Certificate: [][]byte{self.Raw}, PrivateKey: k, Leaf: self}
	for _, tc := range []struct {
		name string
		max  uint16
	}{
		{"TLS 1.2", tls.VersionTLS12},
		{"TLS 1.3", tls.VersionTLS13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.Broker().Denials.Snapshot()
			conf := &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1", MaxVersion: tc.max}
			c, err := tls.Dial("tcp", f.MQTTAddr(), conf)
			if err == nil {
				// TLS 1.3: the client's side of the handshake ends before the
				// server has checked its certificate; the refusal is the
				// server's alert, which comes instead of any MQTT answer.
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(mqttConnect("dev-1"))
				_, err = io.ReadFull(c, make([]byte, 4))
				c.Close()
			}
			if err == nil || !strings.Contains(err.Error(), "remote error: tls: bad certificate") {
				t.Fatalf("dial with a self-signed certificate: got %v, want the server's bad-certificate alert", err)
			}
			t.Logf("refused with %v", err)
			after := f.Broker().Denials.Snapshot()
			if after["tls:untrusted"] != before["tls:untrusted"]+1 {
				t.Errorf("tls:untrusted: got %d, want %d", after["tls:untrusted"], before["tls:untrusted"]+1)
			}
			if after["auth:untrusted"] != before["auth:untrusted"] {
				t.Error("the auth hook saw a connection the handshake should have refused")
			}
		})
	}
	// The device's real credential still gets in.
	real, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialAs(t, f.MQTTAddr(), "dev-1", real, ks.Roots()); err != nil {
		t.Errorf("the real credential: %v", err)
	}
}

// TestExpiredIdentityRenewsPastHandshake: an identity that expired within
// the policy's window passes the handshake (which ignores expiry) and gets
// its renew-only session: its own topics, no broadcasts.
func TestExpiredIdentityRenewsPastHandshake(t *testing.T) {
	clk := &clock{}
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Now = clk.Now })
	dir := f.AddDevice(t, "sleeper")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Until(cred.Leaf.NotAfter) + 30*24*time.Hour) // expired 30 days ago
	var tp protocol.Topics
	c, err := mqttc.Dial(context.Background(), mqttc.Options{
		Broker: f.MQTTAddr(), ClientID: "sleeper", Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1", Time: clk.Now},
		Subscriptions: []string{tp.Down("sleeper")},
		Optional:      []string{tp.Broadcast()},
	})
	if err != nil {
		t.Fatalf("expired identity within its window: got %v, want a renew-only session; denials %v", err, f.Broker().Denials.Snapshot())
	}
	defer c.Close()
	if !slices.Contains(c.Denied(), tp.Broadcast()) {
		t.Errorf("broadcast subscription: allowed, want denied in a renew-only session (denied: %v)", c.Denied())
	}
	if n := f.Broker().Denials.Snapshot()["tls:untrusted"]; n != 0 {
		t.Errorf("tls:untrusted: %d, want 0", n)
	}
}
