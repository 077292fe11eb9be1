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
