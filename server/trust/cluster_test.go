package trust_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// TestClusteredRefusesChainChanges: while several fleetd processes share
// the store, every change of the anchor chain (which lives in each
// process's data directory) is refused with store.ErrClustered and changes
// nothing; UseIssuers with the issuers the set already carries is no
// change and passes; once the process runs alone again, they work.
func TestClusteredRefusesChainChanges(t *testing.T) {
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
	s, err := trust.NewService(ctx, trust.Options{Files: f, Keys: keys, CertValidity: 24 * time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: protocol.NewCodec(), Audit: st, Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	s.SetClustered(true)
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"rotate", func() error { _, err := s.Rotate(ctx, []string{trust.RoleCA}, "admin:test"); return err }, store.ErrClustered},
		{"prepare", func() error { _, err := s.Prepare(ctx, nil, "admin:test"); return err }, store.ErrClustered},
		{"publish", func() error { return s.Publish(ctx, 2, "admin:test") }, store.ErrClustered},
		{"new issuers", func() error { return s.UseIssuers(ctx, [][]byte{[]byte("issuer")}) }, store.ErrClustered},
		{"same issuers", func() error { return s.UseIssuers(ctx, nil) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if v, p := s.Chain().AnchorVersion(), s.Prepared(); v != 1 || p != 0 {
				t.Errorf("the chain changed: serving v%d, prepared v%d", v, p)
			}
		})
	}
	s.SetClustered(false)
	if info, err := s.Rotate(ctx, []string{trust.RoleCA}, "admin:test"); err != nil || info.Version != 2 {
		t.Errorf("rotate alone again: v%d, %v; want v2", info.Version, err)
	}
}
