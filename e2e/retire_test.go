package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
)

// A session opened with a credential before its grace ended does not live
// on after: when fleetd retires the version, the broker drops the session
// (someone holding a stolen old key keeps nothing).
func TestRetiredCredentialSessionDropped(t *testing.T) {
	clk := &clock{}
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Grace = time.Minute; c.Now = clk.Now })
	ctx := context.Background()
	dir := f.AddDevice(t, "old")
	rot, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"old"}})
	if err != nil {
		t.Fatal(err)
	}
	rid := mustHex(t, rot.Rotations[0].RotationID)
	m := newRogue(t, f, dir, 1) // the session that must not outlive v1's grace
	k2, _ := device.NewKey()
	e := &protocol.Enroll{Slot: protocol.SlotIdentity, Version: 2, CSR: csrFor(t, "old", k2)}
	e.RID = rid
	m.publish(m.seal(e, m.key(1)))
	m.waitCert(2)
	a := &protocol.Activated{Slot: protocol.SlotIdentity, Version: 2}
	a.RID = rid
	m.publish(m.seal(a, k2))
	eventually(t, 10*time.Second, "v2 active", func() bool { return activeVersions(t, f.Admin)["old"] == 2 })
	if !m.conn.Connected() {
		t.Fatal("the v1 session dropped before its grace ended")
	}
	clk.Advance(2 * time.Minute)
	eventually(t, 10*time.Second, "the v1 session dropped at the end of grace", func() bool { return !m.conn.Connected() })
}
