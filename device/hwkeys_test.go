//go:build cgo

package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device/hwkeys"
	"github.com/keyfleet/keyfleet/internal/swtpm"
)

// TestKeystoreInTPM follows a keystore whose keys live in a real TPM
// (swtpm behind tpm2-pkcs11) through rotations, a re-enrolment, a
// retirement and a crash: each new key is made in the token and only its
// reference stored; the provisioning PEM key is used until retired; the
// re-enrolment key becomes its version's key; retired versions' keys are
// destroyed; and an orphan key (a crash between generation and the state)
// is destroyed when the keystore is next opened.
func TestKeystoreInTPM(t *testing.T) {
	tpm, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tpm.Stop)
	for _, kv := range tpm.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if err := tpm.InitToken("dev", "so-pin", "user-pin"); err != nil {
		t.Fatalf("init the TPM token: %v", err)
	}
	pin := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pin, []byte("user-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	hw, err := hwkeys.Open("pkcs11:token=dev;object=agent?module-path=" + tpm.Module + "&pin-source=file:" + pin)
	if err != nil {
		t.Fatal(err)
	}
	defer hw.Close()

	caKey, _ := NewKey()
	root, err := certs.NewRoot(caKey, "test CA", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(pub any) *x509.Certificate {
		c, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "d"}, PublicKey: pub.(*ecdsa.PublicKey)})
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
	open := func() *Keystore {
		t.Helper()
		ks, err := Open(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := ks.UseHardware(hw, nil); err != nil {
			t.Fatal(err)
		}
		return ks
	}
	ref := func(dir string) string {
		t.Helper()
		b, err := st.ReadFile(dir + "/" + fileKeyRef)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		return strings.TrimSpace(string(b))
	}
	inToken := func(want ...string) {
		t.Helper()
		got, err := hw.Refs()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("keys in the token: got %v, want %v", got, want)
		}
	}
	ks := open()
	if k, err := ks.Signer(1); err != nil || !samePublic(k, &k1.PublicKey) {
		t.Fatalf("v1, the provisioning PEM key: got %v", err)
	}
	rotate := func(v uint32) {
		t.Helper()
		k, err := ks.BeginPending(v, []byte{byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Key(v); !errors.Is(err, ErrKeyInHardware) {
			t.Fatalf("Key(%d): got %v, want ErrKeyInHardware", v, err)
		}
		if _, err := st.ReadFile(versionDir(v) + "/" + fileKeyPEM); err == nil {
			t.Fatalf("v%d has a key.pem", v)
		}
		if _, err := ks.StorePendingCert(v, issue(k.Public()).Raw, time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := CSR("d", k); err != nil {
			t.Fatalf("CSR signed in the TPM: %v", err)
		}
		if err := ks.Promote(v); err != nil {
			t.Fatal(err)
		}
	}
	rotate(2)
	rotate(3)
	if _, err := st.ReadFile(versionDir(1) + "/" + fileKeyPEM); err == nil {
		t.Fatal("v1's PEM key is still there after v3 was promoted")
	}
	inToken(ref(versionDir(2)), ref(versionDir(3)))

	// A re-enrolment: its key is made in the token and becomes v5's.
	rk, err := ks.BeginReenroll()
	if err != nil {
		t.Fatal(err)
	}
	reref := ref(reenrollDir)
	if _, err := ks.AdoptReenrolled(5, []byte("rid-5"), issue(rk.Public()).Raw, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := ref(versionDir(5)); got != reref {
		t.Fatalf("v5's key: got %s, want the re-enrolment key %s", got, reref)
	}
	if err := ks.Promote(5); err != nil {
		t.Fatal(err)
	}
	inToken(ref(versionDir(3)), reref) // v2, the old previous, destroyed

	// A crash between a key's generation and the state naming it.
	orphan, _, err := hw.Generate("identity/v6")
	if err != nil {
		t.Fatal(err)
	}
	inToken(ref(versionDir(3)), reref, orphan)
	ks = open()
	inToken(ref(versionDir(3)), reref)

	if ok, err := ks.Retire(3); !ok || err != nil {
		t.Fatalf("Retire(3): got %v, %v", ok, err)
	}
	inToken(reref)
	if k, err := ks.Signer(5); err != nil || !samePublic(k, rk.Public()) {
		t.Fatalf("active v5 after all that: %v", err)
	}
}
