package mosquitto

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"slices"
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

// caWithKey is a root that can sign CRLs, and a leaf issued under it.
type caWithKey struct {
	root *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) caWithKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: []byte(name)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return caWithKey{root, key}
}

func (ca caWithKey) leaf(t *testing.T, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dev"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// PlanCRLFile writes one list per distinct root, signed by it, with the
// certificates that root issued; rewrites only when the entries changed or
// a list passed half of its validity; keeps a previous entry the store no
// longer names until Keep; and signs every new list at least a second
// after the previous one with a higher number (OpenSSL keeps the lists it
// read before and takes the latest).
func TestPlanCRLFile(t *testing.T) {
	a, b, other := newCA(t, "root a"), newCA(t, "root b"), newCA(t, "elsewhere")
	keys := map[*x509.Certificate]crypto.Signer{a.root: a.key, b.root: b.key}
	sign := func(r *x509.Certificate) (crypto.Signer, error) {
		for c, k := range keys {
			if c.Equal(r) {
				return k, nil
			}
		}
		return nil, errors.New("no key")
	}
	t0 := time.Now().Truncate(time.Second)
	a7, a8, b9, x5 := a.leaf(t, 7), a.leaf(t, 8), b.leaf(t, 9), other.leaf(t, 5)
	day := 24 * time.Hour
	opts := func(now time.Time) CRLOptions { return CRLOptions{Now: now, Validity: 7 * day, Keep: 30 * day} }
	var old []*x509.RevocationList
	for _, tc := range []struct {
		name      string
		roots     []*x509.Certificate
		refused   []Refused
		now       time.Time
		wantWrite bool
		want      map[string][]int64 // root CN -> serials
		unknown   int
	}{
		{"first file: every root has a list, even empty", []*x509.Certificate{a.root, a.root, b.root},
			[]Refused{{a7, t0}, {x5, t0}}, t0, true, map[string][]int64{"root a": {7}, "root b": nil}, 1},
		{"nothing new: no rewrite", []*x509.Certificate{a.root, b.root}, []Refused{{a7, t0}}, t0.Add(time.Minute), false, nil, 0},
		{"a retirement in the same second: rewritten", []*x509.Certificate{a.root, b.root},
			[]Refused{{a7, t0}, {a8, t0}, {b9, t0}}, t0, true, map[string][]int64{"root a": {7, 8}, "root b": {9}}, 0},
		{"the store forgot a7: kept from the file", []*x509.Certificate{a.root, b.root},
			[]Refused{{a8, t0}, {b9, t0}}, t0.Add(day), false, nil, 0},
		{"half the validity gone: signed again", []*x509.Certificate{a.root, b.root},
			[]Refused{{a8, t0}, {b9, t0}}, t0.Add(4 * day), true, map[string][]int64{"root a": {7, 8}, "root b": {9}}, 0},
		{"past Keep: a7 dropped", []*x509.Certificate{a.root, b.root},
			[]Refused{{a8, t0.Add(31 * day)}, {b9, t0.Add(31 * day)}}, t0.Add(31 * day), true, map[string][]int64{"root a": {8}, "root b": {9}}, 0},
	} {
		plan, err := PlanCRLFile(tc.roots, sign, tc.refused, old, opts(tc.now))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (plan.PEM != nil) != tc.wantWrite || plan.Unknown != tc.unknown {
			t.Fatalf("%s: wrote %v, unknown %d; want %v, %d", tc.name, plan.PEM != nil, plan.Unknown, tc.wantWrite, tc.unknown)
		}
		if !tc.wantWrite {
			continue
		}
		path := filepath.Join(t.TempDir(), "crl.pem")
		if _, err := WriteCRLFile(path, plan.PEM); err != nil {
			t.Fatal(err)
		}
		lists, err := ReadCRLFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(lists) != len(tc.want) {
			t.Fatalf("%s: %d lists, want %d", tc.name, len(lists), len(tc.want))
		}
		for _, l := range lists {
			root := map[string]*x509.Certificate{"root a": a.root, "root b": b.root}[l.Issuer.CommonName]
			if root == nil || l.CheckSignatureFrom(root) != nil {
				t.Errorf("%s: list of %q not signed by that root", tc.name, l.Issuer.CommonName)
				continue
			}
			var got []int64
			for _, e := range l.RevokedCertificateEntries {
				got = append(got, e.SerialNumber.Int64())
			}
			if !slices.Equal(got, tc.want[l.Issuer.CommonName]) {
				t.Errorf("%s: %s lists %v, want %v", tc.name, l.Issuer.CommonName, got, tc.want[l.Issuer.CommonName])
			}
			if !l.NextUpdate.Equal(l.ThisUpdate.Add(7 * day)) {
				t.Errorf("%s: valid %v to %v, want 7 days", tc.name, l.ThisUpdate, l.NextUpdate)
			}
			if len(old) > 0 && (!l.ThisUpdate.After(old[0].ThisUpdate) || l.Number.Cmp(old[0].Number) <= 0) {
				t.Errorf("%s: this update %v, number %v; the previous list's %v, %v", tc.name, l.ThisUpdate, l.Number, old[0].ThisUpdate, old[0].Number)
			}
		}
		old = lists
	}
}
