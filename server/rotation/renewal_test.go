package rotation_test

import (
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// TestRenewalWindows: fleetd rotates a device that says hello in the last
// third of its certificate's life, and one whose certificate expired within
// the policy's window (it may still sign uplinks); past the window, its key
// is no longer accepted.
func TestRenewalWindows(t *testing.T) {
	day := 24 * time.Hour
	pol := policy.Policy{CertValidity: policy.Duration(90 * day), RenewAfterExpiry: policy.Duration(100 * day)}
	tests := []struct {
		name   string
		after  time.Duration
		rotate bool
		reason rotation.Reason
	}{
		{"fresh certificate", 10 * day, false, ""},
		{"inside the renewal third", 80 * day, true, ""},
		{"expired 50 days ago", 140 * day, true, ""},
		{"expired 150 days ago", 240 * day, false, "key-not-accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pol)
			id, _ := h.device("d1")
			h.clk.Advance(tt.after)
			hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 4,
				Delegation: nil}
			err := h.uplink(topics.Up("d1"), hello, id, "d1")
			if got := rotation.ReasonOf(err); got != tt.reason {
				t.Fatalf("hello: reason %q (%v), want %q", got, err, tt.reason)
			}
			rotated := false
			for _, ty := range h.out.types() {
				rotated = rotated || ty == protocol.TypeRotate
			}
			if rotated != tt.rotate {
				t.Errorf("rotate sent: %v, want %v", rotated, tt.rotate)
			}
			if tt.rotate && !contains(h.audit("d1"), "requested/policy") {
				t.Errorf("audit: %v", h.audit("d1"))
			}
		})
	}
}
