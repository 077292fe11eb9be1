package escrow_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// pushed records the devices the escrow asked to deliver keys to.
type pushed struct {
	mu      sync.Mutex
	devices []string
}

func (p *pushed) PushDataKeys(_ context.Context, device string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.devices = append(p.devices, device)
	return nil
}

// TestRotateDataKeys: each operator rotation gives every device that is
// not revoked a new primary key, pushes it, and reports every version
// that changes state, per device, in the data slot.
func TestRotateDataKeys(t *testing.T) {
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for _, d := range []*store.Device{{ID: "dev-1"}, {ID: "dev-2", Revoked: true}} {
		if err := st.CreateDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	pol := policy.Default()
	pol.DataKeysDecrypt = 1
	e, err := escrow.New(keys, st, pol, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var changes []string
	push := &pushed{}
	e.SetHooks(escrow.Hooks{Push: push, OnChange: func(c lifecycle.Change) {
		mu.Lock()
		defer mu.Unlock()
		if c.Slot != lifecycle.SlotData || c.Actor != "admin:test" {
			t.Errorf("change %v: slot %q actor %q, want data by admin:test", c, c.Slot, c.Actor)
		}
		changes = append(changes, c.String())
	}})
	for i, want := range [][]string{
		{"dev-1 data v1 active"},
		{"dev-1 data v1 superseded", "dev-1 data v2 active"},
		{"dev-1 data v1 retired", "dev-1 data v2 superseded", "dev-1 data v3 active"},
	} {
		changes = nil
		res, err := e.RotateDataKeys(ctx, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Rotated, []string{"dev-1"}) || len(res.Failed) != 0 {
			t.Errorf("rotation %d: rotated %v, failed %v; want dev-1 only", i+1, res.Rotated, res.Failed)
		}
		if !slices.Equal(changes, want) {
			t.Errorf("rotation %d: changes %q, want %q", i+1, changes, want)
		}
	}
	if !slices.Equal(push.devices, []string{"dev-1", "dev-1", "dev-1"}) {
		t.Errorf("pushed to %v, want dev-1 after each rotation", push.devices)
	}
}

// TestRevertDataKey: one device's rotation, then its rollback: the
// version before is primary again and the new one decrypt-only, reported
// and pushed; a second revert changes nothing but says it stands
// reverted; one with no earlier version to go back to changes nothing.
func TestRevertDataKey(t *testing.T) {
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for _, id := range []string{"dev-1", "dev-2"} {
		if err := st.CreateDevice(ctx, &store.Device{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := escrow.New(keys, st, policy.Default(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var changes []string
	push := &pushed{}
	e.SetHooks(escrow.Hooks{Push: push, OnChange: func(c lifecycle.Change) { changes = append(changes, c.String()) }})
	for _, want := range []uint32{1, 2} {
		v, err := e.RotateDataKey(ctx, "dev-1", "campaign:c1")
		if err != nil || v != want {
			t.Fatalf("rotate: v%d, %v; want v%d", v, err, want)
		}
	}
	if v, err := e.RotateDataKey(ctx, "dev-2", "campaign:c1"); err != nil || v != 1 {
		t.Fatalf("rotate dev-2: v%d, %v; want v1 (versions are per device)", v, err)
	}
	changes, push.devices = nil, nil
	for _, tc := range []struct {
		device      string
		version     uint32
		want        bool
		wantChanges []string
	}{
		{"dev-1", 2, true, []string{"dev-1 data v1 active", "dev-1 data v2 superseded"}},
		{"dev-1", 2, true, nil},  // reverted already: it stands reverted
		{"dev-1", 1, false, nil}, // v1 is primary, but nothing before it
		{"dev-2", 1, false, nil}, // the first key: nothing to go back to
	} {
		changes = nil
		ok, err := e.RevertDataKey(ctx, tc.device, tc.version, "campaign:c1", "campaign rollback")
		if err != nil || ok != tc.want || !slices.Equal(changes, tc.wantChanges) {
			t.Errorf("revert %s v%d: %v, %v, changes %q; want %v, %q", tc.device, tc.version, ok, err, changes, tc.want, tc.wantChanges)
		}
	}
	if !slices.Equal(push.devices, []string{"dev-1"}) {
		t.Errorf("pushed to %v, want dev-1 once", push.devices)
	}
	d, err := st.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.DataKey(1).Status != store.DataKeyPrimary || d.DataKey(2).Status != store.DataKeyDecryptOnly {
		t.Errorf("dev-1: v1 %v, v2 %v; want primary, decrypt-only", d.DataKey(1).Status, d.DataKey(2).Status)
	}
	// The next rotation goes on from the highest version.
	if v, err := e.RotateDataKey(ctx, "dev-1", "campaign:c2"); err != nil || v != 3 {
		t.Errorf("rotate after the revert: v%d, %v; want v3", v, err)
	}
}
