package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
)

// TestReenrollKeyLeftByCrash: a crash after AdoptReenrolled saved the
// state but before it removed the re-enrolment key leaves that key behind;
// it is now the pending version's key, and reusing it for the next
// re-enrolment would be refused as key reuse. BeginReenroll makes a new one.
func TestReenrollKeyLeftByCrash(t *testing.T) {
	caKey, _ := NewKey()
	root, err := certs.NewRoot(caKey, "test CA", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(pub *ecdsa.PublicKey) *x509.Certificate {
		c, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "d"}, PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	k1, _ := NewKey()
	upd, _ := NewKey()
	updDER, _ := x509.MarshalPKIXPublicKey(&upd.PublicKey)
	st := NewMemStorage()
	if err := InstallTo(st, Identity{ID: "d", Broker: "x:1"}, k1, identity.EncodePEM(issue(&k1.PublicKey)), identity.EncodePEM(root),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: updDER})); err != nil {
		t.Fatal(err)
	}
	ks, err := Open(st)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := ks.BeginReenroll()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := st.ReadFile(reenrollDir + "/key.pem")
	if _, err := ks.AdoptReenrolled(5, []byte("rid-0001"), issue(rk.Public().(*ecdsa.PublicKey)).Raw, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The crash: the key file is back where AdoptReenrolled removed it.
	if err := st.WriteFile(reenrollDir+"/key.pem", keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := ks.BeginReenroll()
	if err != nil {
		t.Fatal(err)
	}
	if samePublic(again, rk.Public()) {
		t.Error("BeginReenroll reused the key that is now version 5's")
	}
	// Without a crash, a re-enrolment in progress keeps its key.
	if k, _ := ks.BeginReenroll(); !samePublic(k, again.Public()) {
		t.Error("BeginReenroll replaced the key of the re-enrolment under way")
	}
}
