package release_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/store"
)

// sent records what would go out on fleetd's MQTT session.
type sent struct {
	mu     sync.Mutex
	topics []string
}

func (s *sent) Publish(_ context.Context, topic string, _ []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topics = append(s.topics, topic)
	return nil
}

func manifest(v uint32) *firmware.Manifest {
	return &firmware.Manifest{VendorID: firmware.UUID{1}, ClassID: firmware.UUID{2}, Version: v, Size: 1024,
		Digest: [firmware.DigestSize]byte{3}, URI: "https://example.test/fw.bin"}
}

// TestPublish: releases are signed with the firmware key, audited,
// reported, broadcast, kept across a reopen, and only ever go up.
func TestPublish(t *testing.T) {
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
	var changes []lifecycle.Change
	pub := &sent{}
	opts := release.Options{File: filepath.Join(dir, "firmware", "current.json"),
		Key:   func() (crypto.Signer, error) { return fwKey, nil },
		Audit: st, Publisher: pub, Codec: protocol.NewCodec(),
		OnChange: func(c lifecycle.Change) { changes = append(changes, c) }}
	r, err := release.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if v, m := r.CurrentFirmware(); v != 0 || m != nil {
		t.Fatalf("before any release: got v%d, want none", v)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		version uint32
		wantErr error
	}{
		{2, nil},
		{2, release.ErrInvalid}, // not newer
		{1, release.ErrInvalid}, // older
		{3, nil},
	} {
		info, err := r.Publish(ctx, manifest(tc.version), "admin:test")
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("publish v%d: got %v, want %v", tc.version, err, tc.wantErr)
		}
		if err != nil {
			continue
		}
		m, err := firmware.Verify(info.Manifest, fwKey.Public())
		if err != nil || m.Version != tc.version {
			t.Fatalf("publish v%d: manifest does not verify under the firmware key: %v", tc.version, err)
		}
	}
	if v, _ := r.CurrentFirmware(); v != 3 {
		t.Errorf("current: got v%d, want v3", v)
	}
	want := []string{"firmware v2 active", "firmware v2 superseded", "firmware v3 active"}
	if len(changes) != len(want) {
		t.Fatalf("changes: got %v, want %v", changes, want)
	}
	for i, c := range changes {
		if c.String() != want[i] || c.Device != "" || c.Actor != "admin:test" {
			t.Errorf("change %d: got %q (device %q, actor %q), want %q fleet-wide by admin:test", i, c, c.Device, c.Actor, want[i])
		}
	}
	if len(pub.topics) != 2 || pub.topics[0] != (protocol.Topics{}).FirmwareTopic() {
		t.Errorf("broadcasts: got %v, want two on %s", pub.topics, (protocol.Topics{}).FirmwareTopic())
	}
	var audited []uint32
	if err := st.ForEachAudit(ctx, 0, func(rec *store.AuditRecord) error {
		if rec.Action == "firmware-published" {
			audited = append(audited, rec.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(audited) != 2 || audited[0] != 2 || audited[1] != 3 {
		t.Errorf("audited releases: got %v, want [2 3]", audited)
	}
	r2, err := release.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := r2.CurrentFirmware(); v != 3 {
		t.Errorf("after reopen: got v%d, want v3", v)
	}
}
