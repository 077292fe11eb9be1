package rotation_test

import (
	"context"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
)

// TestReturningDeviceOrder: a device back after months reports anchors v1
// and data key v1; fleetd answers with the anchors first (everything after
// may be signed by keys only the new sets name), then the delegation, then
// the missing data keys, and retires v1 only after the new primary went out.
func TestReturningDeviceOrder(t *testing.T) {
	h := newHarness(t, policy.Policy{DataKeysDecrypt: 2})
	id, _ := h.device("d1")
	ctx := context.Background()
	for range 4 {
		if _, err := h.escrow.Rotate(ctx, "test", nil); err != nil {
			t.Fatal(err)
		}
	}
	hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 1, DataKeys: []uint32{1}}
	if err := h.uplink(topics.Up("d1"), hello, id, "d1"); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, p := range h.out.take() {
		switch m := p.msg.(type) {
		case *protocol.Anchors:
			order = append(order, "anchors")
		case *protocol.Delegation:
			order = append(order, "delegation")
		case *protocol.Key:
			order = append(order, "key"+string('0'+byte(m.Version)))
		case *protocol.Retire:
			order = append(order, "retire"+string('0'+byte(m.Version)))
		default:
			order = append(order, protocol.TypeOf(m).String())
		}
	}
	want := []string{"anchors", "delegation", "key2", "key3", "key4", "retire1"}
	if len(order) != len(want) {
		t.Fatalf("sent %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("sent %v, want %v", order, want)
		}
	}
}
