package broker_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
)

// TestDevicesWaitForTheServer: with AwaitServer, a device that connects
// before fleetd's session has subscribed to the uplinks is dropped without
// a CONNACK (what it publishes would be lost), and admitted once that
// subscription is granted. fleetd's session itself is never held back.
func TestDevicesWaitForTheServer(t *testing.T) {
	b, ca, root := startBroker(t, true)
	t.Cleanup(func() { _ = b.Close() })
	addr := b.Addr()
	device := func() bool {
		t.Helper()
		c, err := tls.Dial("tcp", addr, deviceTLS(t, ca, root, "dev-1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return connectMQTT(c, "dev-1")
	}
	if device() {
		t.Fatal("device admitted before fleetd subscribed to the uplinks")
	}
	if got := b.Denials.Snapshot()["auth:server-not-subscribed"]; got != 1 {
		t.Fatalf("denials auth:server-not-subscribed = %d, want 1", got)
	}

	srv, err := tls.Dial("tcp", addr, clientTLS(t, ca, root, identity.RoleServer, "fleetd"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_ = srv.SetDeadline(time.Now().Add(5 * time.Second))
	if !connectMQTT(srv, "fleetd") {
		t.Fatal("fleetd's session refused")
	}
	if device() {
		t.Fatal("device admitted after fleetd connected but before it subscribed")
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: protocol.Topics{}.SharedUp(broker.ServerShareGroup), Qos: 1}}}
	var buf bytes.Buffer
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 5) // SUBACK: header, length 3, packet id, one code
	if _, err := io.ReadFull(srv, ack); err != nil {
		t.Fatal(err)
	}
	if ack[0] != 0x90 || ack[4] >= 0x80 {
		t.Fatalf("SUBACK % x: subscription not granted", ack)
	}
	if !device() {
		t.Fatal("device refused after fleetd subscribed to the uplinks")
	}
}
