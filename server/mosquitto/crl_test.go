package mosquitto

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// CRLPEM signs a list under the root that verifies with the root, holds
// exactly the serials given, and carries the number and validity given.
func TestCRLPEM(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second).UTC()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		serials []*big.Int
	}{
		{"empty (a root with nothing refused still needs a list)", nil},
		{"two retired versions", []*big.Int{big.NewInt(7), big.NewInt(1 << 40)}},
	} {
		b, err := CRLPEM(root, key, tc.serials, big.NewInt(3), now, now.Add(24*time.Hour))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		blk, rest := pem.Decode(b)
		if blk == nil || blk.Type != "X509 CRL" || len(rest) != 0 {
			t.Fatalf("%s: not one PEM CRL", tc.name)
		}
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if err := crl.CheckSignatureFrom(root); err != nil {
			t.Errorf("%s: signature: %v", tc.name, err)
		}
		if crl.Number.Int64() != 3 || !crl.ThisUpdate.Equal(now) || !crl.NextUpdate.Equal(now.Add(24*time.Hour)) {
			t.Errorf("%s: number %v, this %v, next %v", tc.name, crl.Number, crl.ThisUpdate, crl.NextUpdate)
		}
		if len(crl.RevokedCertificateEntries) != len(tc.serials) {
			t.Fatalf("%s: %d entries, want %d", tc.name, len(crl.RevokedCertificateEntries), len(tc.serials))
		}
		for i, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(tc.serials[i]) != 0 {
				t.Errorf("%s: entry %d serial %v, want %v", tc.name, i, e.SerialNumber, tc.serials[i])
			}
		}
	}
}
