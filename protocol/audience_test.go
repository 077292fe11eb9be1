package protocol

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
)

// A signature binds the device it was sealed for: a downlink copied onto
// another device's topic, or an uplink replayed as another device's, fails.
func TestAudienceBinding(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	m := &Rotate{Header: Header{ID: id(1), RID: id(2), IAT: 1700000000, Exp: 1700086400}, Slot: SlotIdentity, Version: 2}
	b, err := c.Seal(m, key, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		audience string
		want     error
	}{
		{"dev-a", nil},
		{"dev-b", ErrBadSignature},
		{"", ErrBadSignature},
	} {
		t.Run(tc.audience, func(t *testing.T) {
			env, err := c.Open(b)
			if err != nil {
				t.Fatal(err)
			}
			if err := env.Verify(&key.PublicKey, tc.audience); !errors.Is(err, tc.want) {
				t.Errorf("Verify for %q: got %v, want %v", tc.audience, err, tc.want)
			}
		})
	}
}

func TestSealRequiresP256(t *testing.T) {
	c := NewCodec()
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := &Rotate{Header: Header{ID: id(1), RID: id(2), IAT: 1700000000, Exp: 1700086400}, Slot: SlotIdentity, Version: 2}
	if _, err := c.Seal(m, k384, ""); err == nil {
		t.Fatal("Seal with a P-384 key: got nil error, want refusal")
	}
	b, err := c.Seal(m, newKey(t), "")
	if err != nil {
		t.Fatal(err)
	}
	env, err := c.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Verify(&k384.PublicKey, ""); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify with a P-384 key: got %v, want ErrBadSignature", err)
	}
}
