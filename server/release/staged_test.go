package release_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestStagedReleases: a staged release reaches only the devices pinned to
// it and is not broadcast; a rollback release carries the previous image
// under a new sequence number, is made once, and is offered to every
// device running the release it reverts; promoting makes a staged release
// the fleet's; all of it survives a reopen.
func TestStagedReleases(t *testing.T) {
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
	pub := &sent{}
	opts := release.Options{File: filepath.Join(dir, "firmware", "current.json"),
		Key:   func() (crypto.Signer, error) { return fwKey, nil },
		Audit: st, Publisher: pub, Codec: protocol.NewCodec()}
	r, err := release.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Publish(ctx, manifest(2), "admin:test"); err != nil {
		t.Fatal(err)
	}
	good := manifest(2)
	if _, err := r.Stage(ctx, manifest(3), "admin:test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stage(ctx, manifest(3), "admin:test"); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("staging v3 twice: got %v, want ErrInvalid", err)
	}
	if _, err := r.Publish(ctx, manifest(3), "admin:test"); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("publishing v3 over staged v3: got %v, want ErrInvalid", err)
	}
	if len(pub.topics) != 1 {
		t.Errorf("broadcasts %v: a staged release must not be broadcast", pub.topics)
	}
	for _, tc := range []struct {
		name         string
		pin, running uint32
		want         uint32
	}{
		{"unpinned, behind", 0, 1, 2},
		{"unpinned, current", 0, 2, 2},
		{"pinned to the staged release", 3, 2, 3},
		{"pinned to an unknown release", 9, 2, 2},
	} {
		if v, _ := r.FirmwareFor(tc.pin, tc.running); v != tc.want {
			t.Errorf("%s: FirmwareFor(%d, %d) = v%d, want v%d", tc.name, tc.pin, tc.running, v, tc.want)
		}
	}
	if v, _ := r.CurrentFirmware(); v != 2 {
		t.Errorf("current v%d after staging, want v2", v)
	}

	// Release 3 goes wrong: its rollback release carries v2's image as v4.
	back, err := r.Revert(ctx, 3, 2, "campaign:c1")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := r.Revert(ctx, 3, 2, "campaign:c1"); err != nil || again != back {
		t.Errorf("second revert: v%d, %v; want the same v%d", again, err, back)
	}
	if back != 4 {
		t.Errorf("rollback release v%d, want v4 (above every known version)", back)
	}
	v, signed := r.FirmwareFor(0, 3)
	if v != 4 {
		t.Fatalf("a device running the reverted v3 is offered v%d, want v4", v)
	}
	m, err := firmware.Verify(signed, fwKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 4 || m.Digest != good.Digest || m.URI != good.URI || m.Size != good.Size {
		t.Errorf("rollback manifest %+v, want v2's image as v4", m)
	}
	if !r.Reverted(3) || r.Reverted(2) || r.Reverted(4) {
		t.Error("Reverted: want v3 only")
	}
	if v, _ := r.FirmwareFor(0, 2); v != 2 {
		t.Errorf("a device on v2 is offered v%d, want v2 (nothing)", v)
	}
	if !r.Known(3) || !r.Known(4) || r.Known(5) {
		t.Error("Known: want v2, v3, v4")
	}

	// Reopened, the staged releases are still there; promoting the
	// rollback release makes it the fleet's and still reverts v3.
	r2, err := release.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := r2.FirmwareFor(3, 2); v != 3 {
		t.Errorf("after reopen, pinned to v3: offered v%d", v)
	}
	if err := r2.Promote(ctx, 4, "campaign:c1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := r2.CurrentFirmware(); v != 4 {
		t.Errorf("current v%d after promotion, want v4", v)
	}
	if again, err := r2.Revert(ctx, 3, 2, "campaign:c1"); err != nil || again != 4 {
		t.Errorf("revert after promotion: v%d, %v; want v4", again, err)
	}
	if !r2.Reverted(3) || r2.Known(3) {
		t.Error("after promotion v3 is still reverted and no longer staged")
	}
	if err := r2.Promote(ctx, 4, "campaign:c1"); err != nil {
		t.Errorf("promoting the current release again: %v", err)
	}
	if err := r2.Promote(ctx, 7, "campaign:c1"); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("promoting an unknown release: %v", err)
	}
	// A release made the fleet's by its campaign, then rolled back: the
	// release before it is no longer current or staged, yet its image is
	// still found.
	if _, err := r2.Stage(ctx, manifest(6), "admin:test"); err != nil {
		t.Fatal(err)
	}
	if err := r2.Promote(ctx, 6, "campaign:c2"); err != nil {
		t.Fatal(err)
	}
	if back, err := r2.Revert(ctx, 6, 4, "campaign:c2"); err != nil || back != 7 {
		t.Errorf("revert of the fleet's release 6 to the earlier 4: v%d, %v; want v7", back, err)
	}
	if _, err := r2.Revert(ctx, 6, 1, "campaign:c2"); err != nil {
		t.Errorf("a second revert of 6 returns the first: %v", err)
	}
	var staged, reverted int
	if err := st.ForEachAudit(ctx, 0, func(rec *store.AuditRecord) error {
		switch rec.Action {
		case "firmware-staged":
			staged++
		case "firmware-reverted":
			reverted++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if staged != 2 || reverted != 2 {
		t.Errorf("audit: %d firmware-staged, %d firmware-reverted; want two each", staged, reverted)
	}
}
