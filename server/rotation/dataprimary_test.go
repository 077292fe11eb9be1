package rotation_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
)

// TestDataPrimaryReported: a hello's DataPrimary is recorded, and a device
// that holds the escrow's primary but encrypts with another one (a
// data-key rollback made an older version primary again, or the new
// primary's key message was lost) is sent the primary again, as primary;
// one that reports the escrow's primary is sent nothing.
func TestDataPrimaryReported(t *testing.T) {
	h := newHarness(t, policy.Policy{DataKeysDecrypt: 2})
	id, _ := h.device("d1")
	ctx := context.Background()
	for range 2 {
		if _, err := h.escrow.RotateDataKey(ctx, "d1", "test"); err != nil {
			t.Fatal(err)
		}
	}
	keys := func(primary uint32) []string {
		t.Helper()
		hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 4,
			DataKeys: []uint32{1, 2}, DataPrimary: primary}
		if err := h.uplink(topics.Up("d1"), hello, id, "d1"); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range h.out.take() {
			if k, ok := p.msg.(*protocol.Key); ok {
				out = append(out, fmt.Sprintf("v%d status %d", k.Version, k.Status))
			}
		}
		if d, err := h.st.GetDevice(ctx, "d1"); err != nil || d.DataPrimary != primary {
			t.Fatalf("recorded primary %d (%v), want %d", d.DataPrimary, err, primary)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		revert  bool
		primary uint32
		want    []string
	}{
		{"device still on v1", false, 1, []string{"v2 status 1"}},
		{"device on v2", false, 2, nil},
		{"rolled back, device still on v2", true, 2, []string{"v1 status 1"}},
		{"rolled back, device back on v1", false, 1, nil},
		{"device reports no primary", false, 0, nil},
	} {
		if tc.revert {
			if ok, err := h.escrow.RevertDataKey(ctx, "d1", 2, "test", "campaign rollback"); err != nil || !ok {
				t.Fatalf("revert: %v, %v", ok, err)
			}
			h.out.take() // nothing: this escrow has no push hook
		}
		if got := keys(tc.primary); !slices.Equal(got, tc.want) {
			t.Errorf("%s: sent %v, want %v", tc.name, got, tc.want)
		}
	}
}
