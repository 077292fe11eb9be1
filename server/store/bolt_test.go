package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/storetest"
)

// openBolt opens a Bolt store in a fresh directory and registers a cleanup
// that closes it, re-opens the file and checks bbolt's page consistency
// (bbolt's own btesting does the same after every test).
func openBolt(t *testing.T) (*store.Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatalf("OpenBolt: got error %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: got error %v, want nil", err)
		}
		checkBoltFile(t, path)
	})
	return s, path
}

// checkBoltFile runs bbolt's consistency check on a closed store file.
func checkBoltFile(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Errorf("re-open %s for check: got error %v, want nil", path, err)
		return
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}); err != nil {
		t.Errorf("bbolt consistency check of %s: got %v, want no errors", path, err)
	}
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openBolt(t)
		return s
	})
}

func TestBoltDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatalf("OpenBolt: got error %v, want nil", err)
	}
	grace := time.Date(2030, 1, 2, 3, 4, 5, 6789, time.UTC)
	d := &store.Device{ID: "dev-1", CreatedAt: grace.Add(-time.Hour)}
	// Version 1 superseded until grace, version 2 active.
	m := lifecycle.Manage(d.Slot(protocol.SlotIdentity), "dev-1", protocol.SlotIdentity, "test")
	if _, err := m.Provision(lifecycle.Credential{KeyID: []byte("k1"), NotAfter: grace.Add(time.Hour)}, d.CreatedAt); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Request([]byte("rid-2"), d.CreatedAt); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Issue(2, lifecycle.Credential{KeyID: []byte("k2"), NotAfter: grace.Add(48 * time.Hour)}, nil, d.CreatedAt); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Activate(2, nil, d.CreatedAt, grace); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDevice(ctx, d, store.Event{Action: "create", Device: "dev-1"}); err != nil {
		t.Fatalf("CreateDevice: got error %v, want nil", err)
	}
	if _, err := s.UpdateDevice(ctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
		d.Slot(protocol.SlotIdentity).Reported = 2
		return []store.Event{{Action: "activate", Device: "dev-1", Version: 2}}, nil
	}); err != nil {
		t.Fatalf("UpdateDevice: got error %v, want nil", err)
	}
	if err := s.Audit(ctx, store.Event{Action: "operator"}); err != nil {
		t.Fatalf("Audit: got error %v, want nil", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: got error %v, want nil", err)
	}
	checkBoltFile(t, path)

	s, err = store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatalf("re-open: got error %v, want nil", err)
	}
	t.Cleanup(func() { s.Close() })
	got, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice after re-open: got error %v, want nil", err)
	}
	gst := got.Slot(protocol.SlotIdentity)
	if gst.Desired != 2 || gst.Reported != 2 || len(gst.Versions) != 2 {
		t.Fatalf("slot after re-open: got desired %d reported %d %d versions, want 2, 2, 2", gst.Desired, gst.Reported, len(gst.Versions))
	}
	if g := gst.Version(1).GraceUntil; !g.Equal(grace) {
		t.Errorf("GraceUntil after re-open: got %v, want %v (to the nanosecond)", g, grace)
	}
	if g := gst.Version(2).State; g != lifecycle.StateActive {
		t.Errorf("version 2 state after re-open: got %v, want %v", g, lifecycle.StateActive)
	}
	n, err := s.VerifyAudit(ctx)
	if err != nil || n != 3 {
		t.Errorf("VerifyAudit after re-open: got %d, %v, want 3, nil", n, err)
	}
	// The chain continues where it stopped.
	if err := s.Audit(ctx, store.Event{Action: "after-reopen"}); err != nil {
		t.Fatalf("Audit after re-open: got error %v, want nil", err)
	}
	if n, err := s.VerifyAudit(ctx); err != nil || n != 4 {
		t.Errorf("VerifyAudit after appending: got %d, %v, want 4, nil", n, err)
	}
}

func TestBoltSecondOpenTimesOut(t *testing.T) {
	s, path := openBolt(t)
	_ = s
	start := time.Now()
	s2, err := store.OpenBolt(path, store.BoltOptions{Timeout: 50 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second OpenBolt of a file in use: got nil error, want a lock timeout")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("second OpenBolt: took %v, want about the 50ms timeout", el)
	}
}

// seqKey is the audit bucket's key for record n (big-endian, as the store
// writes it; a different layout makes the tamper tests fail loudly).
func seqKey(n uint64) []byte {
	return []byte{byte(n >> 56), byte(n >> 48), byte(n >> 40), byte(n >> 32), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

func TestBoltAuditTamper(t *testing.T) {
	const events = 5
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, b *bolt.Bucket)
	}{
		{"change a byte of a text field", func(t *testing.T, b *bolt.Bucket) {
			// "detail-3" -> "detail-X": still valid CBOR, different content.
			replaceOnce(t, b, 3, []byte("detail-3"), []byte("detail-X"))
		}},
		{"change the device of a record", func(t *testing.T, b *bolt.Bucket) {
			replaceOnce(t, b, 2, []byte("dev-2"), []byte("dev-9"))
		}},
		{"change the first record", func(t *testing.T, b *bolt.Bucket) {
			replaceOnce(t, b, 1, []byte("action-1"), []byte("action-7"))
		}},
		{"change the last record", func(t *testing.T, b *bolt.Bucket) {
			replaceOnce(t, b, events, []byte("detail-5"), []byte("DETAIL-5"))
		}},
		{"flip the last byte of a record", func(t *testing.T, b *bolt.Bucket) {
			v := append([]byte(nil), b.Get(seqKey(3))...)
			v[len(v)-1] ^= 0x01
			mustPut(t, b, seqKey(3), v)
		}},
		{"flip the first byte of a record", func(t *testing.T, b *bolt.Bucket) {
			// The record no longer decodes: that too is a broken chain, not
			// an I/O error an operator might retry.
			v := append([]byte(nil), b.Get(seqKey(3))...)
			v[0] ^= 0x01
			mustPut(t, b, seqKey(3), v)
		}},
		{"delete a middle record", func(t *testing.T, b *bolt.Bucket) {
			mustDelete(t, b, seqKey(3))
		}},
		{"delete the first record", func(t *testing.T, b *bolt.Bucket) {
			mustDelete(t, b, seqKey(1))
		}},
		{"delete the last record", func(t *testing.T, b *bolt.Bucket) {
			mustDelete(t, b, seqKey(events))
		}},
		{"swap two records", func(t *testing.T, b *bolt.Bucket) {
			v2 := append([]byte(nil), b.Get(seqKey(2))...)
			v4 := append([]byte(nil), b.Get(seqKey(4))...)
			mustPut(t, b, seqKey(2), v4)
			mustPut(t, b, seqKey(4), v2)
		}},
		{"duplicate a record under the next number", func(t *testing.T, b *bolt.Bucket) {
			mustPut(t, b, seqKey(events+1), append([]byte(nil), b.Get(seqKey(events))...))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "fleet.db")
			s, err := store.OpenBolt(path, store.BoltOptions{})
			if err != nil {
				t.Fatalf("OpenBolt: got error %v, want nil", err)
			}
			for i := 1; i <= events; i++ {
				e := store.Event{Action: fmt.Sprintf("action-%d", i), Device: fmt.Sprintf("dev-%d", i), Detail: fmt.Sprintf("detail-%d", i)}
				if err := s.Audit(ctx, e); err != nil {
					t.Fatalf("Audit %d: got error %v, want nil", i, err)
				}
			}
			if n, err := s.VerifyAudit(ctx); err != nil || n != events {
				t.Fatalf("VerifyAudit before tampering: got %d, %v, want %d, nil", n, err, events)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: got error %v, want nil", err)
			}

			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatalf("bolt.Open: got error %v, want nil", err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("audit"))
				if b == nil {
					t.Fatal(`bucket "audit": got none, want the audit records`)
				}
				tc.tamper(t, b)
				return nil
			}); err != nil {
				t.Fatalf("tamper: got error %v, want nil", err)
			}
			if err := db.Close(); err != nil {
				t.Fatalf("bolt Close: got error %v, want nil", err)
			}

			s, err = store.OpenBolt(path, store.BoltOptions{})
			if err != nil {
				t.Fatalf("re-open: got error %v, want nil", err)
			}
			defer s.Close()
			n, err := s.VerifyAudit(ctx)
			if !errors.Is(err, store.ErrAuditBroken) {
				t.Errorf("VerifyAudit after tampering: got %d, %v, want error %v", n, err, store.ErrAuditBroken)
			}
		})
	}
}

// replaceOnce replaces the single occurrence of old in record seq.
func replaceOnce(t *testing.T, b *bolt.Bucket, seq uint64, old, new []byte) {
	t.Helper()
	v := b.Get(seqKey(seq))
	if v == nil {
		t.Fatalf("audit record %d: got none, want one", seq)
	}
	i := indexOf(v, old)
	if i < 0 || indexOf(v[i+1:], old) >= 0 || len(old) != len(new) {
		t.Fatalf("audit record %d: got %q occurring other than once in %x, want exactly one", seq, old, v)
	}
	c := append([]byte(nil), v...)
	copy(c[i:], new)
	mustPut(t, b, seqKey(seq), c)
}

func indexOf(v, sub []byte) int {
	for i := 0; i+len(sub) <= len(v); i++ {
		if string(v[i:i+len(sub)]) == string(sub) {
			return i
		}
	}
	return -1
}

func mustPut(t *testing.T, b *bolt.Bucket, k, v []byte) {
	t.Helper()
	if err := b.Put(k, v); err != nil {
		t.Fatalf("put %x: got error %v, want nil", k, err)
	}
}

func mustDelete(t *testing.T, b *bolt.Bucket, k []byte) {
	t.Helper()
	if b.Get(k) == nil {
		t.Fatalf("delete %x: got no record, want one", k)
	}
	if err := b.Delete(k); err != nil {
		t.Fatalf("delete %x: got error %v, want nil", k, err)
	}
}

// The grace index follows the records: a version becoming superseded is
// listed with its deadline, earliest first; retired, it is gone; and a store
// made before the index gets it built when opened.
func TestBoltGraceIndex(t *testing.T) {
	s, path := openBolt(t)
	ctx := context.Background()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(id string) *store.Device {
		d := &store.Device{ID: id}
		if _, err := lifecycle.Manage(d.Slot(protocol.SlotIdentity), id, protocol.SlotIdentity, "test").Provision(lifecycle.Credential{}, t0); err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, id := range []string{"a", "b"} {
		if err := s.CreateDevice(ctx, mk(id)); err != nil {
			t.Fatal(err)
		}
	}
	supersede := func(id string, until time.Time) {
		if _, err := s.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
			m := lifecycle.Manage(d.Slot(protocol.SlotIdentity), id, protocol.SlotIdentity, "test")
			if _, _, err := m.Request([]byte("rid-2"), t0); err != nil {
				return nil, err
			}
			if _, err := m.Issue(2, lifecycle.Credential{}, nil, t0); err != nil {
				return nil, err
			}
			_, err := m.Activate(2, nil, t0, until)
			return nil, err
		}); err != nil {
			t.Fatal(err)
		}
	}
	list := func(s *store.Bolt) []string {
		var out []string
		if err := s.ForEachGrace(ctx, func(dev string, slot uint8, v uint32, until time.Time) error {
			out = append(out, fmt.Sprintf("%s/%d/v%d@%s", dev, slot, v, until.UTC().Format(time.RFC3339)))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	supersede("b", t0.Add(time.Hour))
	supersede("a", t0.Add(2*time.Hour))
	want := []string{"b/1/v1@2030-01-01T01:00:00Z", "a/1/v1@2030-01-01T02:00:00Z"}
	if got := list(s); !reflect.DeepEqual(got, want) {
		t.Fatalf("grace index: got %v, want %v", got, want)
	}
	if _, err := s.UpdateDevice(ctx, "b", func(d *store.Device) ([]store.Event, error) {
		_, err := lifecycle.Manage(d.Slot(protocol.SlotIdentity), "b", protocol.SlotIdentity, "test").Retire(1, t0.Add(3*time.Hour))
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	if got := list(s); !reflect.DeepEqual(got, want[1:]) {
		t.Fatalf("after retiring b/v1: got %v, want %v", got, want[1:])
	}
	// A store without the index (as made before it existed) rebuilds it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("grace")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s2, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := list(s2); !reflect.DeepEqual(got, want[1:]) {
		t.Fatalf("rebuilt index: got %v, want %v", got, want[1:])
	}
}

// A record written before devices had labels and a model (the fields the
// record had then, encoded as OpenBolt encodes) reads back with none, and
// takes labels afterwards.
func TestBoltRecordWithoutLabels(t *testing.T) {
	type oldDevice struct { // store.Device before labels and model
		ID        string
		CreatedAt time.Time
		Revoked   bool
		RevokedAt time.Time
		LastSeen  time.Time
		Slots     map[protocol.Slot]*store.SlotState
		Birth     *store.BirthCredential
		DataKeys  []*store.DataKey
		Anchors   uint32
		Firmware  uint32
	}
	at := time.Date(2031, 3, 14, 15, 9, 26, 0, time.UTC)
	old := oldDevice{ID: "old-1", CreatedAt: at, LastSeen: at, Anchors: 2, Firmware: 7,
		Slots: map[protocol.Slot]*store.SlotState{protocol.SlotIdentity: {Desired: 1, Reported: 1}}}
	o := cbor.CoreDetEncOptions()
	o.Time = cbor.TimeRFC3339Nano
	em, err := o.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := em.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fleet.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("devices"))
		if err != nil {
			return err
		}
		return b.Put([]byte(old.ID), raw)
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	d, err := s.GetDevice(ctx, "old-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels != nil || d.Model != "" || d.Anchors != 2 || d.Firmware != 7 || d.Slot(protocol.SlotIdentity).Desired != 1 {
		t.Errorf("old record read as %+v, want no labels, no model, the rest kept", d)
	}
	if _, err := s.UpdateDevice(ctx, "old-1", func(d *store.Device) ([]store.Event, error) {
		d.Labels, d.Model = map[string]string{"site": "a"}, "m1"
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if d, err = s.GetDevice(ctx, "old-1"); err != nil || d.Labels["site"] != "a" || d.Model != "m1" || d.Anchors != 2 {
		t.Errorf("after labelling: %+v, %v; want site=a, model m1, anchors 2", d, err)
	}
	// A device without labels encodes as the old record did: nothing new
	// on disk for a fleet that uses none.
	var back oldDevice
	d.Labels, d.Model = nil, ""
	b, err := em.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := cbor.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if bb, _ := em.Marshal(back); !bytes.Equal(bb, b) {
		t.Errorf("a device without labels encodes with more than the old fields:\n got %x\nwant %x", b, bb)
	}
}
