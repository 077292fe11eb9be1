package store_test

import (
	"testing"

	"github.com/keyfleet/keyfleet/server/store"
)

func TestDeviceSlotCreates(t *testing.T) {
	var d store.Device
	st := d.Slot(1)
	st.Desired = 3
	if got := d.Slot(1).Desired; got != 3 {
		t.Errorf("Slot(1).Desired after set: got %d, want 3", got)
	}
	if got := len(d.Slots); got != 1 {
		t.Errorf("len(Slots): got %d, want 1", got)
	}
}
