package simulator

import (
	"context"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// TestYear runs the long-absence scenario at a small size: 40 devices, 12
// of them switched off for 400 simulated days while the fleet goes through
// 4 identity rotations, 2 anchor rotations, 3 data-key versions and a
// firmware-key rotation. Every device must come back to the current
// versions of everything with no operator action: the six that return
// within the window renew with their old key, the six past it re-enrol
// with their birth credential.
func TestYear(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := RunYear(ctx, YearConfig{Devices: 40, Offline: 12, Dir: t.TempDir(), Logger: fleettest.Logger(t),
		Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d devices, %d days simulated in %.1fs: %d converged, %d bricked, %d renewed after expiry, %d re-enrolled, %d policy renewals",
		rep.Devices, rep.SimulatedDays, rep.ElapsedSeconds, rep.Converged, rep.Bricked, rep.RenewedAfterExpiry, rep.ReenrolledDevices, rep.PolicyRenewals)
	for _, e := range rep.Events {
		t.Log(e)
	}
	if rep.Bricked != 0 || rep.Converged != 40 {
		t.Errorf("converged %d, bricked %d %v; want 40 and 0", rep.Converged, rep.Bricked, rep.BrickedIDs)
	}
	if rep.ReenrolledDevices != 6 {
		t.Errorf("re-enrolled with the birth credential: %d devices, want the 6 that were away past every window", rep.ReenrolledDevices)
	}
	if rep.RenewedAfterExpiry < 6 {
		t.Errorf("renewed after expiry with the old key: %d, want at least the 6 that came back within the window", rep.RenewedAfterExpiry)
	}
	if rep.Current.Anchors != 1+2+1 || rep.Current.DataKey != 1+3 || rep.Current.Firmware != 3 {
		t.Errorf("current versions: %+v, want anchors 4, data key 4, firmware 3", rep.Current)
	}
	if !rep.AuditOK {
		t.Error("audit chain does not verify")
	}
}
