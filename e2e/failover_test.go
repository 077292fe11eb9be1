package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

// Agents given two broker addresses, one with nothing listening, connect
// through the live one and rotate; when that broker stops and fleetd comes
// back on the other address (as a second node would serve it), every agent
// moves there by itself and rotates again, accepting the restarted
// fleetd's new online key.
func TestAgentFailsOverBetweenBrokers(t *testing.T) {
	const n = 6
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Grace = time.Hour })
	ctx, c := context.Background(), f.Admin
	live, dead := f.Config.MQTTAddr, fleettest.FreeAddr(t)
	var dirs []string
	for i := range n {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("dev-%02d", i)))
	}
	// Each agent starts at a random one of the two: about half of them
	// meet the dead address first.
	runAgents(t, dirs, func(o *device.Options) { o.Brokers = []string{dead, live} })
	eventually(t, 20*time.Second, "all agents connected", func() bool {
		s, err := c.Status(ctx)
		return err == nil && s.ConnectedClient >= n+1
	})
	if _, err := c.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "all rotated to v2 through the live broker", allAt(t, c, n, 2))

	// The live broker goes away; fleetd returns on the other address.
	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}
	f.Config.MQTTAddr = dead
	f.Restart(t)
	c = f.Admin
	eventually(t, 30*time.Second, "all agents reconnected to the other broker", func() bool {
		s, err := c.Status(ctx)
		return err == nil && s.ConnectedClient >= n+1
	})
	if _, err := c.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "all rotated to v3 through the other broker", allAt(t, c, n, 3))
}
