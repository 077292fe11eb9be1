package protocol

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestVerifyDelegation(t *testing.T) {
	c := NewCodec()
	update := fixedKey(t, "update")
	online := fixedKey(t, "online")
	stranger := fixedKey(t, "stranger")
	spki := func(pub any) []byte {
		b, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nb := uint64(testNow.Unix())
	na := nb + 12*3600
	delegation := func(key []byte) *Delegation {
		return &Delegation{Header: Header{ID: id(0x80), IAT: nb}, Key: key, NotBefore: nb, NotAfter: na}
	}
	seal := func(m Message, by *ecdsa.PrivateKey) []byte {
		b, err := c.Seal(m, by, "")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := seal(delegation(spki(&online.PublicKey)), update)
	tests := []struct {
		name   string
		sealed []byte
		now    time.Time
		want   error
	}{
		{"valid at not-before", good, time.Unix(int64(nb), 0), nil},
		{"valid in the middle", good, time.Unix(int64(nb+3600), 0), nil},
		{"not yet valid", good, time.Unix(int64(nb-1), 0), ErrExpired},
		{"expired at not-after", good, time.Unix(int64(na), 0), ErrExpired},
		{"signed by another key", seal(delegation(spki(&online.PublicKey)), stranger), testNow, ErrBadSignature},
		{"signed by the online key itself", seal(delegation(spki(&online.PublicKey)), online), testNow, ErrBadSignature},
		{"not a delegation", seal(examples(t)[1], update), testNow, ErrMalformed},
		{"key not SPKI", seal(delegation([]byte{0x30, 0x00}), update), testNow, ErrMalformed},
		{"key not P-256", seal(delegation(spki(&p384.PublicKey)), update), testNow, ErrMalformed},
		{"garbage", []byte{0xd2, 0x84, 0x00}, testNow, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub, d, err := c.VerifyDelegation(tt.sealed, &update.PublicKey, tt.now)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifyDelegation: got err %v, want nil", err)
				}
				if !pub.Equal(&online.PublicKey) {
					t.Errorf("got key %x, want the online key", spki(pub))
				}
				if d.NotBefore != nb || d.NotAfter != na {
					t.Errorf("got validity %d..%d, want %d..%d", d.NotBefore, d.NotAfter, nb, na)
				}
				// Downlinks signed by the returned key verify.
				env, err := c.Open(seal(examples(t)[1], online))
				if err != nil {
					t.Fatal(err)
				}
				if err := env.Verify(pub, ""); err != nil {
					t.Errorf("downlink signed by the online key: Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("VerifyDelegation: got err %v, want %v", err, tt.want)
			}
			if pub != nil || d != nil {
				t.Errorf("VerifyDelegation: got %v, %+v with err, want nil, nil", pub, d)
			}
		})
	}
}
