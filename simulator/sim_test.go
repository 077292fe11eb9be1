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
