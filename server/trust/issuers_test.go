package trust_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// TestUseIssuers: fleetd switched to an external issuer publishes the next
// anchor set with the same keys and the issuer's CA certificates, once:
// a second start with the same issuer keeps the set; a later key rotation
// carries them on; switching back drops them with one more set. Many
// large sets still fit one anchors message.
func TestUseIssuers(t *testing.T) {
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
	s, err := trust.NewService(ctx, trust.Options{Files: f, Keys: keys, CertValidity: 24 * time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: protocol.NewCodec(), Audit: st, Publisher: &sent{}})
	if err != nil {
		t.Fatal(err)
	}
	var issuers [][]byte
	for _, name := range []string{"step root", "step intermediate"} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		c, err := certs.NewRoot(k, name, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		issuers = append(issuers, c.Raw)
	}
	v1 := s.Chain().Current()
	steps := []struct {
		name    string
		do      func() error
		version uint32
		issuers [][]byte
	}{
		{"embedded CA: nothing to do", func() error { return s.UseIssuers(ctx, nil) }, 1, nil},
		{"switch to the issuer", func() error { return s.UseIssuers(ctx, issuers) }, 2, issuers},
		{"restart with the same issuer", func() error { return s.UseIssuers(ctx, issuers) }, 2, issuers},
		{"update key rotation carries them", func() error {
			_, err := s.Rotate(ctx, []string{trust.RoleUpdate}, "admin:test")
			return err
		}, 3, issuers},
		{"back to the embedded CA", func() error { return s.UseIssuers(ctx, nil) }, 4, nil},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		cur := s.Chain().Current()
		if cur.Version != step.version || !slices.EqualFunc(cur.Issuers, step.issuers, bytes.Equal) {
			t.Fatalf("%s: at v%d with %d issuers, want v%d with %d", step.name, cur.Version, len(cur.Issuers), step.version, len(step.issuers))
		}
		if !bytes.Equal(cur.Root, v1.Root) {
			t.Fatalf("%s: the root changed", step.name)
		}
	}
	sets := s.Chain().Latest(protocol.MaxChainSets)
	if len(sets) == 0 || !bytes.Equal(sets[len(sets)-1], s.Chain().Current().Raw) {
		t.Fatal("Latest does not end with the current set")
	}
	if _, err := protocol.NewCodec().Bare(protocol.Stamp(&protocol.Anchors{Sets: sets}, time.Now(), 0)); err != nil {
		t.Fatalf("the latest %d sets do not fit one anchors message: %v", len(sets), err)
	}
	if _, err := anchors.Walk(v1, s.Chain().SetsAfter(1, protocol.MaxChainSets), anchors.WalkOptions{}); err != nil {
		t.Fatalf("a device at v1 cannot walk what fleetd sends it: %v", err)
	}
}
