package identity_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// issue makes a certificate for tmpl's subject under parent (self-signed
// when parent is nil), parsed back from DER.
func issue(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return c
}

func TestVerify(t *testing.T) {
	rootKey, otherKey := newP256(t), newP256(t)
	rootTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true, IsCA: true,
		}
	}
	root := issue(t, rootTmpl("fleet CA"), nil, nil, rootKey)
	other := issue(t, rootTmpl("other CA"), nil, nil, otherKey)
	leaf := func(cn, uri string, eku ...x509.ExtKeyUsage) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku,
		}
		if uri != "" {
			tmpl.URIs = append(tmpl.URIs, mustURL(t, uri))
		}
		return issue(t, tmpl, root, rootKey, newP256(t))
	}
	good := leaf("dev-1", "urn:keyfleet:device:dev-1", x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AddCert(root)
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other)

	for _, tc := range []struct {
		name    string
		leaf    *x509.Certificate
		roots   *x509.CertPool
		at      time.Time
		want    identity.Identity
		wantErr error // nil with a zero want: any error
	}{
		{"valid", good, roots, now, identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, nil},
		{"another root", good, otherRoots, now, identity.Identity{}, nil},
		{"expired", good, roots, good.NotAfter.Add(time.Second), identity.Identity{}, nil},
		{"not yet valid", good, roots, good.NotBefore.Add(-time.Second), identity.Identity{}, nil},
		{"serverAuth only", leaf("dev-1", "urn:keyfleet:device:dev-1", x509.ExtKeyUsageServerAuth), roots, now, identity.Identity{}, nil},
		{"chains but names no one", leaf("dev-1", "", x509.ExtKeyUsageClientAuth), roots, now, identity.Identity{}, identity.ErrNoIdentity},
		{"chains but CN differs", leaf("dev-2", "urn:keyfleet:device:dev-1", x509.ExtKeyUsageClientAuth), roots, now, identity.Identity{}, identity.ErrNoIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.Verify(tc.leaf, tc.roots, tc.at)
			if tc.want == (identity.Identity{}) {
				if err == nil {
					t.Fatalf("Verify: got %v, nil, want an error", got)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("Verify: got error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Verify: got %v, %v, want %v, nil", got, err, tc.want)
			}
		})
	}
}
