package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
)

// TestLeafCompaction: a certificate delivery drops the leaf's key and the
// device restores it. The round trip gives back the CA's exact bytes, and
// a leaf restored with any other key than the one the CA certified fails
// the CA's signature, so the device's checks lose nothing.
func TestLeafCompaction(t *testing.T) {
	r := realisticMaterial(t)
	compact, err := CompactLeaf(r.cert)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&r.devKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(r.cert)-len(compact), len(spki); got < want {
		t.Errorf("compaction saved %d bytes, want at least the %d of the key", got, want)
	}
	if bytes.Contains(compact, spki) {
		t.Error("compact leaf still contains the key")
	}
	if again, err := CompactLeaf(compact); err != nil || !bytes.Equal(again, compact) {
		t.Errorf("CompactLeaf(compact) = %x, %v; want it unchanged", again, err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		in      []byte
		pub     any
		wantErr error // from ExpandLeaf
		wantSig bool  // the restored leaf verifies under the CA
	}{
		{"own key restores the CA's bytes", compact, &r.devKey.PublicKey, nil, true},
		{"another key: the CA's signature fails", compact, &other.PublicKey, nil, false},
		{"full certificate refused", r.cert, &r.devKey.PublicKey, ErrMalformed, false},
		{"not a certificate", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, &r.devKey.PublicKey, ErrMalformed, false},
		{"truncated", compact[:len(compact)-1], &r.devKey.PublicKey, ErrMalformed, false},
		{"trailing byte", append(bytes.Clone(compact), 0), &r.devKey.PublicKey, ErrMalformed, false},
		{"empty", nil, &r.devKey.PublicKey, ErrMalformed, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			der, err := ExpandLeaf(tc.in, tc.pub)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ExpandLeaf: err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ExpandLeaf: %v", err)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("restored leaf does not parse: %v", err)
			}
			sigErr := c.CheckSignatureFrom(r.ca)
			if tc.wantSig {
				if sigErr != nil {
					t.Errorf("restored leaf: CA signature: %v", sigErr)
				}
				if !bytes.Equal(der, r.cert) {
					t.Errorf("restored leaf %x, want the CA's %x", der, r.cert)
				}
			} else if sigErr == nil {
				t.Error("leaf restored with another key verifies under the CA")
			}
		})
	}
}

// TestCertCarriesCompactLeaf: Marshal sends a Cert's certificate without
// its key, and Decode refuses a delivery that still carries one.
func TestCertCarriesCompactLeaf(t *testing.T) {
	c := NewCodec()
	r := realisticMaterial(t)
	m := &Cert{Header: Header{ID: id(0x40), RID: id(0xa0)}, Slot: SlotIdentity, Version: 4, Cert: r.cert}
	b, err := c.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Cert, r.cert) {
		t.Error("Marshal changed the caller's certificate")
	}
	back, err := c.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := CompactLeaf(r.cert)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.(*Cert).Cert; !bytes.Equal(got, compact) {
		t.Errorf("decoded certificate %x, want the compact leaf %x", got, compact)
	}
	// A sender that skips the compaction: the full leaf on the wire.
	full, err := MarshalCanonical(&Cert{Header: Header{V: Version, Type: TypeCert, ID: id(0x40), RID: id(0xa0)},
		Slot: SlotIdentity, Version: 4, Cert: r.cert})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decode(full); !errors.Is(err, ErrMalformed) {
		t.Errorf("Decode of a cert with its key: err %v, want %v", err, ErrMalformed)
	}
}
