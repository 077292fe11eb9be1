package trust_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// TestStagedRollout: a prepared set is served to nobody but the devices
// it is delivered to; the online key is certified under both update keys
// meanwhile (the device's anchors choose the delegation); it survives a
// restart; publishing it does what a rotation does, once.
func TestStagedRollout(t *testing.T) {
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
	f := files(dir)
	if err := trust.Bootstrap(ctx, trust.Options{Files: f, Keys: keys}, []string{"fleet.example"}); err != nil {
		t.Fatal(err)
	}
	pub := &sent{}
	codec := protocol.NewCodec()
	opts := trust.Options{Files: f, Keys: keys, CertValidity: 24 * time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: codec, Audit: st, Publisher: pub}
	s, err := trust.NewService(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	root1 := s.Chain().Root()
	upd1, err := s.Chain().Current().UpdatePublicKey()
	if err != nil {
		t.Fatal(err)
	}
	kid := s.Keeper().Current().KID()

	if v, err := s.Deliver(ctx, "dev-1", 1); err != nil || v != 1 || len(pub.topics) != 0 {
		t.Errorf("delivery with no set prepared to a device on v1: v%d, %v, sent on %v; want v1 and nothing sent", v, err, pub.topics)
	}
	v, err := s.Prepare(ctx, []string{trust.RoleCA, trust.RoleUpdate}, "admin:test")
	if err != nil || v != 2 {
		t.Fatalf("prepare: v%d, %v; want v2", v, err)
	}
	// The fleet is still served v1: catch-up, retained chain, CA, root.
	c := s.Chain()
	if c.AnchorVersion() != 1 || len(c.SetsAfter(1, 4)) != 0 || len(c.Latest(4)) != 1 || !c.Root().Equal(root1) {
		t.Errorf("after prepare: version %d, %d sets after v1, %d latest; want v1 served alone", c.AnchorVersion(),
			len(c.SetsAfter(1, 4)), len(c.Latest(4)))
	}
	if info, _ := s.Info(); info.Version != 1 || s.Prepared() != 2 {
		t.Errorf("info v%d, prepared v%d; want v1 and v2", info.Version, s.Prepared())
	}
	if len(pub.retained) != 0 || len(pub.topics) != 0 {
		t.Errorf("prepare published retained %v, live %v; want nothing", pub.retained, pub.topics)
	}
	checkDelegations := func(t *testing.T, s *trust.Service) {
		t.Helper()
		upd2, err := s.Chain().Prepared().UpdatePublicKey()
		if err != nil {
			t.Fatal(err)
		}
		k := s.Keeper().Current()
		for _, tc := range []struct {
			anchors uint32
			good    any
			bad     any
		}{{1, upd1, upd2}, {2, upd2, upd1}} {
			d := k.DelegationFor(tc.anchors)
			if _, _, err := codec.VerifyDelegation(d, tc.good, time.Now()); err != nil {
				t.Errorf("delegation for a device on v%d does not verify under its update key: %v", tc.anchors, err)
			}
			if _, _, err := codec.VerifyDelegation(d, tc.bad, time.Now()); err == nil {
				t.Errorf("delegation for a device on v%d verifies under the other update key", tc.anchors)
			}
		}
	}
	checkDelegations(t, s)
	if !bytes.Equal(s.Keeper().Current().KID(), kid) {
		t.Error("preparing replaced the online key: every device would need a new delegation")
	}
	// A renewal during the roll-out certifies the new key under both.
	if _, err := s.Keeper().Rotate(time.Now()); err != nil {
		t.Fatal(err)
	}
	checkDelegations(t, s)

	// Delivery: the sets and the delegation, on the device's own topic.
	if v, err := s.Deliver(ctx, "dev-1", 1); err != nil || v != 2 {
		t.Fatalf("deliver: v%d, %v", v, err)
	}
	down := protocol.Topics{}.Down("dev-1")
	if len(pub.topics) != 2 || pub.topics[0] != down || pub.topics[1] != down {
		t.Errorf("delivery published on %v, want the anchors and the delegation on %s", pub.topics, down)
	}
	if _, err := s.Deliver(ctx, "dev-2", 2); err != nil || len(pub.topics) != 2 {
		t.Errorf("delivery to a device on v2: %v, published %v; want nothing sent", err, pub.topics)
	}

	// The same roles again: the same set; other roles: refused.
	if v, err := s.Prepare(ctx, nil, "admin:test"); err != nil || v != 2 {
		t.Errorf("prepare again: v%d, %v; want v2", v, err)
	}
	if _, err := s.Prepare(ctx, []string{trust.RoleFirmware}, "admin:test"); err == nil {
		t.Error("a second set prepared over the first")
	}

	// A restart keeps the roll-out as it was.
	s, err = trust.NewService(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if s.Chain().AnchorVersion() != 1 || s.Prepared() != 2 {
		t.Fatalf("reopened at v%d with v%d prepared; want v1 and v2", s.Chain().AnchorVersion(), s.Prepared())
	}
	checkDelegations(t, s)

	// Published: the chain, a new root, an online key under the new
	// update key only; once.
	for range 2 {
		if err := s.Publish(ctx, 2, "campaign:c1"); err != nil {
			t.Fatal(err)
		}
	}
	c = s.Chain()
	if c.AnchorVersion() != 2 || s.Prepared() != 0 || c.Root().Equal(root1) {
		t.Errorf("after publish: v%d, prepared v%d; want v2 published under a new root", c.AnchorVersion(), s.Prepared())
	}
	if k := s.Keeper().Current(); !bytes.Equal(k.DelegationFor(2), k.Delegation) || !bytes.Equal(k.DelegationFor(1), k.Delegation) {
		t.Error("after publish, the online key still has two delegations")
	}
	topics := protocol.Topics{}
	if !pub.has(pub.retained, topics.Anchors()) || !pub.has(pub.topics, topics.AnchorsLive()) || !pub.has(pub.topics, topics.Delegation()) {
		t.Errorf("published: retained %v, live %v; want the anchors retained and live, and a delegation", pub.retained, pub.topics)
	}
	n := map[string]int{}
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Version == 2 {
			n[r.Action]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n["anchors-prepared"] != 1 || n["anchors-rotated"] != 1 {
		t.Errorf("audit for v2: %v, want one anchors-prepared and one anchors-rotated", n)
	}
	if s2, err := trust.NewService(ctx, opts); err != nil || s2.Chain().AnchorVersion() != 2 || s2.Prepared() != 0 {
		t.Errorf("reopened after publish: %v", err)
	}
}

// TestRotateOverPrepared: a fleet-wide rotation with a set prepared
// publishes it and the set made after it; the online key is then
// certified by the newest update key alone.
func TestRotateOverPrepared(t *testing.T) {
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
	f := files(dir)
	if err := trust.Bootstrap(ctx, trust.Options{Files: f, Keys: keys}, []string{"fleet.example"}); err != nil {
		t.Fatal(err)
	}
	codec := protocol.NewCodec()
	s, err := trust.NewService(ctx, trust.Options{Files: f, Keys: keys, CertValidity: 24 * time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: codec, Audit: st, Publisher: &sent{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, []string{trust.RoleUpdate}, "admin:test"); err != nil {
		t.Fatal(err)
	}
	info, err := s.Rotate(ctx, []string{trust.RoleFirmware}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 3 || info.Prepared != 0 || s.Chain().AnchorVersion() != 3 || len(s.Chain().SetsAfter(1, 4)) != 2 {
		t.Fatalf("after rotating over a prepared v2: %+v, serving v%d", info, s.Chain().AnchorVersion())
	}
	upd3, err := s.Chain().Current().UpdatePublicKey()
	if err != nil {
		t.Fatal(err)
	}
	k := s.Keeper().Current()
	if _, _, err := codec.VerifyDelegation(k.DelegationFor(1), upd3, time.Now()); err != nil {
		t.Errorf("the delegation is not by the newest update key: %v", err)
	}
	if next, _ := k.NextDelegation(); next != nil {
		t.Error("a second delegation is kept after the prepared set was published")
	}
}
