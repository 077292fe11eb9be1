package device

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
)

// externalCA is an issuer outside the fleet CA, laid out as step-ca lays
// out its PKI: a root and an intermediate that signs the leaves.
type externalCA struct {
	root, inter *x509.Certificate
	ca          *certs.CA
}

func newExternalCA(t *testing.T) externalCA {
	t.Helper()
	rk, _ := NewKey()
	root, err := certs.NewRoot(rk, "external root", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ik, _ := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "external intermediate"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &ik.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(inter, ik, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return externalCA{root: root, inter: inter, ca: ca}
}

func (e externalCA) issue(t *testing.T, name string, pub any) []byte {
	t.Helper()
	c, err := e.ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: name}, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return c.Raw
}

// TestAgentTrustsAnchorIssuers: a certificate from an external issuer
// (root and intermediate, as step-ca issues) is refused until the anchor
// set names that issuer, then installs as the device's next credential,
// also after a restart that reloads the set from storage. Another
// issuer's certificate stays refused.
func TestAgentTrustsAnchorIssuers(t *testing.T) {
	c := newChain(t, 1)
	ext, stranger := newExternalCA(t), newExternalCA(t)
	v1, err := anchors.Parse(c.raw[0])
	if err != nil {
		t.Fatal(err)
	}
	s := c.keys[0].set(t)
	s.Issuers = [][]byte{ext.root.Raw, ext.inter.Raw}
	v2, err := anchors.Next(v1, s, c.keys[0].root, c.keys[0].update)
	if err != nil {
		t.Fatal(err)
	}
	a, st := newAnchoredAgent(t, c, 1, nil)
	k2, err := a.ks.BeginPending(2, []byte("rid-0002"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ks.StorePendingCert(2, ext.issue(t, "dev-1", k2.Public()), time.Now()); err == nil {
		t.Fatal("external certificate before the anchors name its issuer: got nil error, want refusal")
	}
	if r := deliver(t, a, anchorsMsg(t, v2)); len(r) != 0 {
		t.Fatalf("anchors with issuers rejected: %v", r)
	}
	if got := a.AnchorVersion(); got != 2 {
		t.Fatalf("anchor version %d, want 2", got)
	}
	// A restarted agent reads the issuers back from the stored set.
	a, err = New(Options{Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		der     []byte
		wantErr bool
	}{
		{"another issuer", stranger.issue(t, "dev-1", k2.Public()), true},
		{"the external issuer naming another device", ext.issue(t, "dev-2", k2.Public()), true},
		{"the external issuer", ext.issue(t, "dev-1", k2.Public()), false},
	} {
		_, err := a.ks.StorePendingCert(2, tc.der, time.Now())
		if (err != nil) != tc.wantErr {
			t.Fatalf("%s: got err %v, want error %v", tc.name, err, tc.wantErr)
		}
	}
	if v, ready := a.ks.PendingReady(); !ready || v != 2 {
		t.Fatalf("pending ready = %d, %v; want 2, true", v, ready)
	}
}
