package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// now is the tests' fixed clock, on a whole second (X.509 times have
// second precision).
var now = time.Date(2030, 5, 17, 10, 0, 0, 0, time.UTC)

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("url.Parse(%q): %v", s, err)
	}
	return u
}

// certWith makes a real certificate (signed by a throwaway key) carrying cn
// and uris, parsed back from DER as a peer's would be.
func certWith(t *testing.T, cn string, uris ...string) *x509.Certificate {
	t.Helper()
	key := newP256(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
	}
	for _, u := range uris {
		tmpl.URIs = append(tmpl.URIs, mustURL(t, u))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return c
}

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		want identity.Identity // zero: ErrNoIdentity
	}{
		{"device", certWith(t, "dev-1", "urn:keyfleet:device:dev-1"), identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}},
		{"server", certWith(t, "fleetd", "urn:keyfleet:server:fleetd"), identity.Identity{Role: identity.RoleServer, Name: "fleetd"}},
		{"admin", certWith(t, "alice", "urn:keyfleet:admin:alice"), identity.Identity{Role: identity.RoleAdmin, Name: "alice"}},
		{"foreign URIs ignored", certWith(t, "dev-1", "https://example.com/x", "urn:keyfleet:device:dev-1", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"), identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}},
		{"no URI", certWith(t, "dev-1"), identity.Identity{}},
		{"only foreign URIs", certWith(t, "dev-1", "https://example.com/dev-1", "urn:other:device:dev-1"), identity.Identity{}},
		{"two identity URIs", certWith(t, "dev-1", "urn:keyfleet:device:dev-1", "urn:keyfleet:device:dev-2"), identity.Identity{}},
		{"same identity URI twice", certWith(t, "dev-1", "urn:keyfleet:device:dev-1", "urn:keyfleet:device:dev-1"), identity.Identity{}},
		{"two roles", certWith(t, "dev-1", "urn:keyfleet:device:dev-1", "urn:keyfleet:server:dev-1"), identity.Identity{}},
		{"CN mismatch", certWith(t, "dev-2", "urn:keyfleet:device:dev-1"), identity.Identity{}},
		{"empty CN", certWith(t, "", "urn:keyfleet:device:dev-1"), identity.Identity{}},
		{"unknown role", certWith(t, "dev-1", "urn:keyfleet:robot:dev-1"), identity.Identity{}},
		{"unknown role beside a valid one", certWith(t, "dev-1", "urn:keyfleet:robot:dev-1", "urn:keyfleet:device:dev-1"), identity.Identity{}},
		{"empty name", certWith(t, "", "urn:keyfleet:device:"), identity.Identity{}},
		{"no name", certWith(t, "device", "urn:keyfleet:device"), identity.Identity{}},
		{"role case differs", certWith(t, "dev-1", "urn:keyfleet:Device:dev-1"), identity.Identity{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.Of(tc.cert)
			if tc.want == (identity.Identity{}) {
				if !errors.Is(err, identity.ErrNoIdentity) {
					t.Fatalf("Of: got %v, %v, want error %v", got, err, identity.ErrNoIdentity)
				}
				return
			}
			if err != nil {
				t.Fatalf("Of: got error %v, want %v", err, tc.want)
			}
			if got != tc.want {
				t.Errorf("Of: got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestURIRoundTrip(t *testing.T) {
	for _, id := range []identity.Identity{
		{Role: identity.RoleDevice, Name: "dev-1"},
		{Role: identity.RoleServer, Name: "fleetd"},
		{Role: identity.RoleAdmin, Name: "a.b_c-d"},
	} {
		t.Run(id.String(), func(t *testing.T) {
			u := id.URI()
			if want := "urn:keyfleet:" + string(id.Role) + ":" + id.Name; u.String() != want {
				t.Errorf("URI: got %q, want %q", u.String(), want)
			}
			reparsed := mustURL(t, u.String())
			got, err := identity.ParseURI(reparsed)
			if err != nil || got != id {
				t.Errorf("ParseURI(%q): got %v, %v, want %v, nil", u, got, err, id)
			}
		})
	}
	if _, err := identity.ParseURI(nil); !errors.Is(err, identity.ErrNoIdentity) {
		t.Errorf("ParseURI(nil): got %v, want %v", err, identity.ErrNoIdentity)
	}
}

func TestPEMRoundTrip(t *testing.T) {
	a := certWith(t, "a", "urn:keyfleet:device:a")
	b := certWith(t, "b", "urn:keyfleet:device:b")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}})

	for _, tc := range []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr bool
	}{
		{"one", identity.EncodePEM(a), []*x509.Certificate{a}, false},
		{"two in order", identity.EncodePEM(a, b), []*x509.Certificate{a, b}, false},
		{"other blocks skipped", slices.Concat(keyPEM, identity.EncodePEM(b), []byte("junk between\n"), identity.EncodePEM(a)), []*x509.Certificate{b, a}, false},
		{"empty", nil, nil, true},
		{"no PEM", []byte("not pem"), nil, true},
		{"only a key", keyPEM, nil, true},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), nil, true},
		{"bad DER after a good one", slices.Concat(identity.EncodePEM(a), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0}})), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.ParsePEM(tc.data)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParsePEM: got %d certificates and nil error, want an error", len(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePEM: got error %v, want nil", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParsePEM: got %d certificates, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("certificate %d: got %q, want %q", i, got[i].Subject.CommonName, tc.want[i].Subject.CommonName)
				}
			}
		})
	}
	if got := identity.EncodePEM(); len(got) != 0 {
		t.Errorf("EncodePEM(): got %q, want empty", got)
	}
}
