package escrow

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestAdvance walks a device's data keys through five rotations: one
// primary at a time, DataKeysDecrypt older versions for decryption, then
// retired, then destroyed (wrapped key wiped) after DataKeyDestroyAfter.
func TestAdvance(t *testing.T) {
	pol := policy.Default()
	pol.DataKeysDecrypt = 2
	pol.DataKeyDestroyAfter = policy.Duration(100 * policy.Day)
	d := &store.Device{ID: "dev-1"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		day  int
		want string // status of v1..vN
	}{
		{0, "P"},
		{10, "D P"},
		{20, "D D P"},
		{30, "R D D P"},
		{200, "X R D D P"}, // v1 retired on day 30, destroyed 100+ days later; v2 retired now
	}
	for i, s := range steps {
		now := t0.Add(time.Duration(s.day) * policy.Day)
		events := Advance(d, []byte(fmt.Sprintf("wrapped-%d", i+1)), KEKLabel, pol, now, "test")
		if len(events) == 0 || events[0].Action != "data-key-created" || events[0].Version != uint32(i+1) {
			t.Fatalf("step %d: events %v", i, events)
		}
		if got := statuses(d); got != s.want {
			t.Errorf("step %d (day %d): statuses %q, want %q", i, s.day, got, s.want)
		}
	}
	if k := d.DataKey(1); k.Wrapped != nil {
		t.Error("destroyed version keeps its wrapped key")
	}
	if k := d.DataKey(2); k.Wrapped == nil {
		t.Error("retired version lost its escrow before the destroy delay")
	}
}

func statuses(d *store.Device) string {
	out := ""
	for i, k := range d.DataKeys {
		if i > 0 {
			out += " "
		}
		out += map[store.DataKeyStatus]string{store.DataKeyPrimary: "P", store.DataKeyDecryptOnly: "D",
			store.DataKeyRetired: "R", store.DataKeyDestroyed: "X"}[k.Status]
	}
	return out
}
