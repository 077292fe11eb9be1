package stepca_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/certs/stepca"
	"github.com/keyfleet/keyfleet/certs/stepca/stepcatest"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// startIssuer runs step-ca with a JWK provisioner whose key is a fresh
// SoftHSM2 key, and an Issuer that signs its tokens with that key.
func startIssuer(t *testing.T) (*stepcatest.CA, *stepca.Issuer) {
	t.Helper()
	tok, err := hsm.Open(fleettest.NewToken(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	key, err := tok.GenerateP256("keyfleet-stepca-provisioner")
	if err != nil {
		t.Fatal(err)
	}
	sca := stepcatest.Start(t, "keyfleet", key.Public(), 0)
	is, err := stepca.New(context.Background(), stepca.Options{URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return sca, is
}

// enroll does what a device and fleetd do for one rotation: the device
// makes a key and a CSR, fleetd checks it and has the issuer sign it.
func enroll(ctx context.Context, is certs.Issuer, id string) (*x509.Certificate, *x509.CertificateRequest, error) {
	k, err := device.NewKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := device.CSR(id, k)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, err
	}
	pub, err := certs.CheckCSR(csr, id)
	if err != nil {
		return nil, nil, err
	}
	cert, err := is.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: id}, PublicKey: pub, CSR: der})
	return cert, csr, err
}

// TestStepCAIssuesRotations: 50 devices rotate twice through a real
// step-ca; every certificate chains to step-ca's root through its
// intermediate, names the device and carries the device's own new key;
// a revoked certificate is revoked in step-ca's database and no other is.
func TestStepCAIssuesRotations(t *testing.T) {
	const devices, rotations = 50, 2
	ctx := context.Background()
	sca, is := startIssuer(t)
	roots := x509.NewCertPool()
	for _, r := range is.Roots() {
		roots.AddCert(r)
	}
	if !is.Roots()[0].Equal(sca.Root) {
		t.Fatal("the issuer's root is not step-ca's")
	}
	last := make([]*x509.Certificate, devices)
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	sem := make(chan struct{}, 8)
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id := fmt.Sprintf("dev-%03d", d)
			seen := map[string]bool{}
			for r := range rotations {
				cert, csr, err := enroll(ctx, is, id)
				if err != nil {
					errs <- fmt.Errorf("%s rotation %d: %w", id, r+1, err)
					return
				}
				inter := x509.NewCertPool()
				for _, c := range is.Intermediates() {
					inter.AddCert(c)
				}
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					errs <- fmt.Errorf("%s rotation %d: does not chain to step-ca's root: %w", id, r+1, err)
					return
				}
				if got, err := identity.Of(cert); err != nil || got != (identity.Identity{Role: identity.RoleDevice, Name: id}) {
					errs <- fmt.Errorf("%s rotation %d: names %v (%v)", id, r+1, got, err)
					return
				}
				if !csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
					errs <- fmt.Errorf("%s rotation %d: not the device's new key", id, r+1)
					return
				}
				if seen[string(cert.RawSubjectPublicKeyInfo)] {
					errs <- fmt.Errorf("%s rotation %d: key reused", id, r+1)
					return
				}
				seen[string(cert.RawSubjectPublicKeyInfo)] = true
				last[d] = cert
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if !is.Intermediates()[0].Equal(sca.Intermediate) {
		t.Error("the issuer did not learn step-ca's intermediate")
	}

	revoked := last[7]
	if err := is.Revoke(ctx, revoked, 1, "keyfleet: device revoked"); err != nil {
		t.Fatal(err)
	}
	if err := is.Revoke(ctx, revoked, 1, "keyfleet: device revoked"); err != nil {
		t.Errorf("a second revocation of the same certificate: %v", err)
	}
	for d, c := range last {
		got, err := sca.DB.IsRevoked(c.SerialNumber.String())
		if err != nil {
			t.Fatal(err)
		}
		if want := d == 7; got != want {
			t.Errorf("dev-%03d: revoked at step-ca %v, want %v", d, got, want)
		}
	}
}

// TestStepCARefuses: step-ca signs nothing without the device's CSR, nor
// for a token of a key it does not know.
func TestStepCARefuses(t *testing.T) {
	ctx := context.Background()
	sca, is := startIssuer(t)
	k, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: k.Public()}); err != stepca.ErrNoCSR {
		t.Errorf("without a CSR: %v, want ErrNoCSR", err)
	}
	other, err := device.NewKey() // a software key step-ca never registered
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := stepca.New(ctx, stepca.Options{URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner, Key: other})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := enroll(ctx, stranger, "dev-1"); err == nil {
		t.Error("step-ca signed for a token of an unregistered key")
	}
	der, err := device.CSR("dev-1", k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: other.Public(), CSR: der}); err == nil {
		t.Error("issued for a CSR of another key than the request's")
	}
}
