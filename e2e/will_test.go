package e2e

import (
	"crypto/tls"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// TestWillRefused: mochi publishes a last will without asking the ACL, so
// a device that set one could write to any topic (a retained broadcast, or
// another device's down topic) by dropping its connection. The broker
// refuses a device's connect that carries a will.
func TestWillRefused(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	dir := f.AddDevice(t, "sneaky")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	o := paho.NewClientOptions().AddBroker("tls://"+f.Server.MQTTAddr()).SetClientID("sneaky").
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"}).
		SetProtocolVersion(4).SetConnectTimeout(5*time.Second).SetAutoReconnect(false).
		SetWill("kf/b/anchors", "junk", 1, true)
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(5 * time.Second)
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("a connect with a will was accepted")
	}
	if got := f.Server.Broker().Denials.Snapshot()["auth:will-not-allowed"]; got != 1 {
		t.Errorf("denials: %v", f.Server.Broker().Denials.Snapshot())
	}
}
