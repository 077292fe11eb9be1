package simulator

import (
	"context"
	"testing"
)

// The acceptance run of the basic simulator, smaller: every rotation
// completes, and the report's figures are consistent with each other.
func TestRunRotatesEveryDevice(t *testing.T) {
	const devices, rotations = 30, 2
	rep, err := Run(context.Background(), Config{Devices: devices, Rotations: rotations})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RotationsCompleted != devices*rotations || rep.RotationsFailed != 0 {
		t.Fatalf("rotations: got %d completed, %d failed (%v); want %d, 0", rep.RotationsCompleted, rep.RotationsFailed,
			rep.FailuresByReason, devices*rotations)
	}
	if len(rep.NotConverged) != 0 {
		t.Errorf("not converged: %v", rep.NotConverged)
	}
	// Exactly one HSM signature per rotation: the certificate. Downlinks
	// are signed by the online key, not the HSM.
	if rep.HSMOps != uint64(rep.RotationsCompleted) {
		t.Errorf("HSM operations: got %d, want %d", rep.HSMOps, rep.RotationsCompleted)
	}
	if rep.BytesUp == 0 || rep.BytesDown == 0 || rep.BytesPerRotation < 500 {
		t.Errorf("bytes up %d, down %d, per rotation %.0f: implausible", rep.BytesUp, rep.BytesDown, rep.BytesPerRotation)
	}
	if !(0 < rep.P50ms && rep.P50ms <= rep.P99ms && rep.P99ms <= rep.MaxMs) {
		t.Errorf("latency percentiles out of order: p50 %.1f p99 %.1f max %.1f", rep.P50ms, rep.P99ms, rep.MaxMs)
	}
}

// The fleet model: more devices than may be connected at once, sleeping as
// keystores in memory; each wakes, rotates and sleeps again.
func TestFleetModel(t *testing.T) {
	rep, err := Run(context.Background(), Config{Fleet: 400, MaxConnected: 40})
	if err != nil {
		t.Fatal(err)
	}
	if rep.FleetSize != 400 || rep.RotationsCompleted != 400 || rep.RotationsFailed != 0 {
		t.Fatalf("fleet: size %d, %d completed, %d failed (%v)", rep.FleetSize, rep.RotationsCompleted, rep.RotationsFailed, rep.NotConverged)
	}
	if rep.HSMOps != 400 {
		t.Errorf("HSM operations: got %d, want 400 (registration excluded)", rep.HSMOps)
	}
	if rep.SleepingBytesPerDevice <= 0 || rep.SleepingBytesPerDevice > 8192 {
		t.Errorf("sleeping device: %.0f bytes, want a few KiB at most", rep.SleepingBytesPerDevice)
	}
}
