package release_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestClusteredRefusesReleaseChanges: while several fleetd processes share
// the store, publishing, staging, promoting and reverting a release (kept
// in each process's data directory) are refused with store.ErrClustered
// and change nothing; reading the current release still works.
func TestClusteredRefusesReleaseChanges(t *testing.T) {
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	fwKey, err := keys.GenerateP256("firmware")
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := release.Open(release.Options{File: filepath.Join(dir, "firmware", "current.json"),
		Key:   func() (crypto.Signer, error) { return fwKey, nil },
		Audit: st, Publisher: &sent{}, Codec: protocol.NewCodec()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Publish(ctx, manifest(2), "admin:test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stage(ctx, manifest(3), "admin:test"); err != nil {
		t.Fatal(err)
	}
	r.SetClustered(true)
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"publish", func() error { _, err := r.Publish(ctx, manifest(4), "admin:test"); return err }},
		{"stage", func() error { _, err := r.Stage(ctx, manifest(5), "admin:test"); return err }},
		{"promote", func() error { return r.Promote(ctx, 3, "admin:test") }},
		{"revert", func() error { _, err := r.Revert(ctx, 2, 1, "admin:test"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, store.ErrClustered) {
				t.Errorf("got %v, want store.ErrClustered", err)
			}
			if v, _ := r.CurrentFirmware(); v != 2 || !r.Known(3) || r.Known(4) || r.Known(5) {
				t.Errorf("the releases changed: current v%d", v)
			}
		})
	}
}
