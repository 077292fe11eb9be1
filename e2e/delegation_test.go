package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

// fleetd renews its online signing key; a connected device learns the new
// delegation from the broadcast, a device that was away learns it in answer
// to its hello, and both go on accepting signed commands.
func TestOnlineKeyRenewal(t *testing.T) {
	clk := &clock{}
	f := fleettest.StartFleet(t, func(c *server.Config) {
		c.Now = clk.Now
		c.OnlineKeyLifetime = time.Minute
	})
	ctx := context.Background()
	online := f.AddDevice(t, "online")
	away := f.AddDevice(t, "away")
	runAgents(t, []string{online}, nil)
	stopAway := runAgentsStoppable(t, []string{away})
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "both at v2", allAt(t, f.Admin, 2, 2))
	stopAway()

	before := f.Engine().Stats()
	clk.Advance(40 * time.Second) // past half the lifetime: fleetd renews
	eventually(t, 10*time.Second, "online key renewed", func() bool { return f.Trust().OnlineKeyRenewals() > 0 })

	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"online"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "connected device rotates under the new key", func() bool {
		return activeVersions(t, f.Admin)["online"] == 3
	})
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"away"}}); err != nil {
		t.Fatal(err)
	}
	runAgents(t, []string{away}, nil)
	eventually(t, 20*time.Second, "returning device rotates under the new key", func() bool {
		return activeVersions(t, f.Admin)["away"] == 3
	})
	if after := f.Engine().Stats(); len(after.Rejected) != len(before.Rejected) {
		t.Errorf("rejections: before %v, after %v", before.Rejected, after.Rejected)
	}
}
