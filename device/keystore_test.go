package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
)

// The keystore's life cycle, on disk and in memory alike: install, pending
// key, certificate checked against CA and key, promotion, retirement, and
// the state surviving a reopen (a restarted agent).
func TestKeystoreLifecycle(t *testing.T) {
	caKey, _ := NewKey()
	root, err := certs.NewRoot(caKey, "test CA", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string, pub *ecdsa.PublicKey) *x509.Certificate {
		c, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: name}, PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	updKey, _ := NewKey()
	updDER, err := x509.MarshalPKIXPublicKey(&updKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	updPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: updDER})

	for _, tc := range []struct {
		name string
		st   func(t *testing.T) Storage
	}{
		{"dir", func(t *testing.T) Storage { return &DirStorage{Dir: t.TempDir()} }},
		{"memory", func(*testing.T) Storage { return NewMemStorage() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.st(t)
			k1, _ := NewKey()
			if err := InstallTo(st, Identity{ID: "dev-1", Broker: "127.0.0.1:1"}, k1, identity.EncodePEM(issue("dev-1", &k1.PublicKey)),
				identity.EncodePEM(root), updPEM); err != nil {
				t.Fatal(err)
			}
			if err := InstallTo(st, Identity{ID: "dev-1"}, k1, nil, identity.EncodePEM(root), updPEM); err == nil {
				t.Fatal("second install: got nil error, want refusal")
			}
			ks, err := Open(st)
			if err != nil {
				t.Fatal(err)
			}
			k2, err := ks.BeginPending(2, []byte("rid-0002"))
			if err != nil {
				t.Fatal(err)
			}
			again, err := ks.BeginPending(2, []byte("rid-0002"))
			if err != nil || !samePublic(again, k2.Public()) {
				t.Fatalf("repeated BeginPending: got a different key (%v), want the same", err)
			}
			if _, err := ks.BeginPending(1, nil); err == nil {
				t.Error("BeginPending of a version not above active: got nil error")
			}
			other, _ := NewKey()
			for _, bad := range []struct {
				what string
				der  []byte
			}{
				{"certificate for another key", issue("dev-1", &other.PublicKey).Raw},
				{"certificate naming another device", issue("dev-2", k2.Public().(*ecdsa.PublicKey)).Raw},
				{"not a certificate", []byte{0x30, 0x03, 0x02, 0x01, 0x01}},
			} {
				if _, err := ks.StorePendingCert(2, bad.der, time.Now()); err == nil {
					t.Errorf("%s: got nil error, want refusal", bad.what)
				}
			}
			if _, ready := ks.PendingReady(); ready {
				t.Fatal("pending ready after refused certificates")
			}
			if _, err := ks.StorePendingCert(2, issue("dev-1", k2.Public().(*ecdsa.PublicKey)).Raw, time.Now()); err != nil {
				t.Fatal(err)
			}
			// A restarted agent sees the pending credential ready.
			ks, err = Open(st)
			if err != nil {
				t.Fatal(err)
			}
			if v, ready := ks.PendingReady(); !ready || v != 2 {
				t.Fatalf("after reopen: pending %d ready %v, want 2 true", v, ready)
			}
			if err := ks.Promote(2); err != nil {
				t.Fatal(err)
			}
			if got := ks.State(); got.Active != 2 || got.Previous != 1 || got.Pending != 0 {
				t.Fatalf("after promote: %+v", got)
			}
			if ok, err := ks.Retire(2); ok || err != nil {
				t.Errorf("retiring the active version: got %v, %v; want false, nil", ok, err)
			}
			if ok, err := ks.Retire(1); !ok || err != nil {
				t.Fatalf("retire previous: got %v, %v", ok, err)
			}
			if _, err := ks.Key(1); !errors.Is(err, ErrNoCredential) {
				t.Errorf("key of retired version: got %v, want ErrNoCredential", err)
			}
			if _, err := st.ReadFile("identity/v1/cert.pem"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("retired version's files: got %v, want gone", err)
			}
			ks, err = Open(st)
			if err != nil {
				t.Fatal(err)
			}
			if got := ks.State(); got.Active != 2 || got.Previous != 0 {
				t.Errorf("after reopen: %+v, want active 2, no previous", got)
			}
			// A rotation cancelled after its certificate arrived (a
			// campaign's rollback): retiring the pending version drops
			// its key and certificate and leaves the active one.
			k3, err := ks.BeginPending(3, []byte("rid-3"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ks.StorePendingCert(3, issue("dev-1", k3.Public().(*ecdsa.PublicKey)).Raw, time.Now()); err != nil {
				t.Fatal(err)
			}
			if ok, err := ks.Retire(4); ok || err != nil {
				t.Errorf("retiring a version the device does not hold: got %v, %v; want false, nil", ok, err)
			}
			if ok, err := ks.Retire(3); !ok || err != nil {
				t.Fatalf("retire pending: got %v, %v", ok, err)
			}
			if _, ready := ks.PendingReady(); ready {
				t.Error("pending still ready after it was retired")
			}
			if _, err := st.ReadFile("identity/v3/cert.pem"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("retired pending version's files: got %v, want gone", err)
			}
			ks, err = Open(st)
			if err != nil {
				t.Fatal(err)
			}
			if got := ks.State(); got.Active != 2 || got.Pending != 0 {
				t.Errorf("after reopen: %+v, want active 2, nothing pending", got)
			}
		})
	}
}
