package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// A device whose session is taken over again and again (as when it
// reconnects before the broker noticed its old connection died) still gets
// its commands afterwards. mochi 2.7.9 lost such a device from its client
// map now and then; the auth hook's settleTakeover prevents that.
func TestSessionTakeoverKeepsDelivering(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	dir := f.AddDevice(t, "flappy")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	runAgents(t, []string{dir}, nil)
	ctx := context.Background()
	for round := uint32(2); round <= 6; round++ {
		// Take the agent's session over a few times; it reconnects each time.
		for i := 0; i < 3; i++ {
			eventually(t, 10*time.Second, "agent reconnected", func() bool { return f.Broker().Connected() >= 2 })
			if err := dialAs(t, f.MQTTAddr(), "flappy", cred, ks.Roots()); err != nil && round == 2 {
				t.Fatalf("take-over dial: %v", err)
			}
		}
		if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"flappy"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, fmt.Sprintf("flappy at v%d", round), func() bool {
			return activeVersions(t, f.Admin)["flappy"] == round
		})
		// The v1 credential is superseded but within grace: keep using it
		// for the take-overs.
	}
}
