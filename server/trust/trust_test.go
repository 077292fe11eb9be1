package trust_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// TestChain: genesis, two rotations, a reopen; every version walks from
// the one before, replaced update and firmware keys are revoked, a leaf of
// the newest root verifies from the first root through the crosses.
// Software keys stand in for the token here: the chain only needs
// crypto.Signers by label (the token is exercised end to end in e2e).
func TestChain(t *testing.T) {
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(dir + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := keys.GenerateP256("ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.GenerateP256("update"); err != nil {
		t.Fatal(err)
	}
	now := time.Now
	root, err := certs.NewRoot(ca, "keyfleet CA", now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := trust.Genesis(dir+"/anchors", keys, root, trust.Labels{CA: "ca", Update: "update", Firmware: "firmware"}, now)
	if err != nil {
		t.Fatal(err)
	}
	v1 := c.Current()
	ctx := context.Background()
	if _, err := c.Rotate(ctx, []string{trust.RoleCA, trust.RoleUpdate}); err != nil {
		t.Fatalf("rotate ca+update: %v", err)
	}
	v3, err := c.Rotate(ctx, []string{trust.RoleFirmware})
	if err != nil {
		t.Fatalf("rotate firmware: %v", err)
	}
	if v3.Version != 3 || c.AnchorVersion() != 3 {
		t.Fatalf("version %d, want 3", v3.Version)
	}
	if _, err := c.Rotate(ctx, []string{"nonsense"}); err == nil {
		t.Error("an unknown role rotated")
	}
	// Each root's CRLs are signed with its own CA key; a certificate that
	// is no root of the chain (a cross certificate) has none.
	for i, r := range c.RootCertificates() {
		k, err := c.RootSigner(r)
		if err != nil {
			t.Fatalf("root %d: %v", i, err)
		}
		if pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(r.PublicKey) {
			t.Errorf("root %d: the signer's key is not the root's", i)
		}
	}
	if _, err := c.RootSigner(c.Crosses()[0]); err == nil {
		t.Error("a cross certificate got a root's signer")
	}
	// A device holding v1 walks to v3.
	got, err := anchors.Walk(v1, c.SetsAfter(1, 4), anchors.WalkOptions{})
	if err != nil || got.Version != 3 {
		t.Fatalf("walk from v1: %v, %v", got, err)
	}
	upd1, _ := v1.UpdatePublicKey()
	fw1, _ := v1.FirmwarePublicKey()
	for _, k := range []any{upd1, fw1} {
		kid := mustKID(t, k)
		if !v3.IsRevoked(kid) {
			t.Errorf("replaced key %x not revoked in v3", kid)
		}
	}
	// Reopen from disk: same chain.
	c2, err := trust.Open(dir+"/anchors", keys, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c2.Current().Raw, v3.Raw) {
		t.Error("reopened chain differs")
	}
	// A leaf of the current root verifies for a device that trusts only
	// the first root, given the crosses.
	signer, err := c2.Signer(trust.RoleCA)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := certs.NewCA(c2.Root(), signer, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := keys.GenerateP256("leaf")
	leaf, err := cur.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleServer, Name: "fleetd"}, PublicKey: k.Public(), DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, x := range c2.Crosses() {
		inter.AddCert(x)
	}
	first := x509.NewCertPool()
	first.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: first, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Errorf("leaf of v3's root from the first root: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c2.Roots(), DNSName: "localhost"}); err != nil {
		t.Errorf("leaf against the broker's pool: %v", err)
	}
}

func mustKID(t *testing.T, pub any) []byte {
	t.Helper()
	kid, err := protocol.KeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}
