package certs_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
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

// testCA is a root valid from now-1h for rootValidity, with an in-memory
// key, and a CA on it.
type testCA struct {
	key  *ecdsa.PrivateKey
	root *x509.Certificate
	ca   *certs.CA
	pool *x509.CertPool
}

func newTestCA(t *testing.T, rootValidity time.Duration, opts certs.CAOptions) *testCA {
	t.Helper()
	key := newP256(t)
	root, err := certs.NewRoot(key, "test fleet CA", now, rootValidity)
	if err != nil {
		t.Fatalf("NewRoot: got error %v, want nil", err)
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return now }
	}
	ca, err := certs.NewCA(root, key, opts)
	if err != nil {
		t.Fatalf("NewCA: got error %v, want nil", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{key: key, root: root, ca: ca, pool: pool}
}

// csrFor makes a CSR signed by key with the given template fields.
func csrFor(t *testing.T, key crypto.Signer, tmpl x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("ParseCertificateRequest: %v", err)
	}
	return csr
}

func TestCheckCSR(t *testing.T) {
	const dev = "dev-42"
	own := identity.Identity{Role: identity.RoleDevice, Name: dev}.URI()
	p256 := newP256(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	subj := pkix.Name{CommonName: dev}

	for _, tc := range []struct {
		name    string
		csr     func(t *testing.T) *x509.CertificateRequest
		wantErr error // nil: accepted
	}{
		{"good, CN only", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj})
		}, nil},
		{"good, CN and own URI", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{own}})
		}, nil},
		{"CN of another device", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-43"}, URIs: []*url.URL{own}})
		}, certs.ErrCSRIdentity},
		{"CN prefix of device", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-4"}})
		}, certs.ErrCSRIdentity},
		{"empty CN", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{URIs: []*url.URL{own}})
		}, certs.ErrCSRIdentity},
		{"URI SAN of another device", func(t *testing.T) *x509.CertificateRequest {
			other := identity.Identity{Role: identity.RoleDevice, Name: "dev-43"}.URI()
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{other}})
		}, certs.ErrCSRIdentity},
		{"own URI plus another device's", func(t *testing.T) *x509.CertificateRequest {
			other := identity.Identity{Role: identity.RoleDevice, Name: "dev-43"}.URI()
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{own, other}})
		}, certs.ErrCSRIdentity},
		{"URI SAN claiming server role", func(t *testing.T) *x509.CertificateRequest {
			srv := identity.Identity{Role: identity.RoleServer, Name: dev}.URI()
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{srv}})
		}, certs.ErrCSRIdentity},
		{"URI SAN claiming admin role", func(t *testing.T) *x509.CertificateRequest {
			adm := identity.Identity{Role: identity.RoleAdmin, Name: dev}.URI()
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{adm}})
		}, certs.ErrCSRIdentity},
		{"foreign URI SAN", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, URIs: []*url.URL{mustURL(t, "https://example.com/dev-42")}})
		}, certs.ErrCSRIdentity},
		{"DNS SAN", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, DNSNames: []string{"fleetd.example.com"}})
		}, certs.ErrCSRIdentity},
		{"DNS SAN equal to the device id", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, DNSNames: []string{dev}, URIs: []*url.URL{own}})
		}, certs.ErrCSRIdentity},
		{"IP SAN", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
		}, certs.ErrCSRIdentity},
		{"e-mail SAN", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p256, x509.CertificateRequest{Subject: subj, EmailAddresses: []string{"dev-42@example.com"}})
		}, certs.ErrCSRIdentity},
		{"RSA key", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, rsaKey, x509.CertificateRequest{Subject: subj})
		}, certs.ErrBadCSR},
		{"P-384 key", func(t *testing.T) *x509.CertificateRequest {
			return csrFor(t, p384, x509.CertificateRequest{Subject: subj})
		}, certs.ErrBadCSR},
		{"tampered signature", func(t *testing.T) *x509.CertificateRequest {
			csr := csrFor(t, p256, x509.CertificateRequest{Subject: subj})
			csr.Signature = bytes.Clone(csr.Signature)
			csr.Signature[len(csr.Signature)-1] ^= 0x01
			return csr
		}, certs.ErrBadCSR},
		{"tampered request body", func(t *testing.T) *x509.CertificateRequest {
			// Signed for dev-43, then relabelled dev-42 in the signed bytes.
			csr := csrFor(t, p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-43"}})
			raw := bytes.Clone(csr.RawTBSCertificateRequest)
			i := bytes.Index(raw, []byte("dev-43"))
			if i < 0 {
				t.Fatal("CN not found in the TBS bytes")
			}
			copy(raw[i:], "dev-42")
			csr.RawTBSCertificateRequest = raw
			csr.Subject.CommonName = dev
			return csr
		}, certs.ErrBadCSR},
		{"signed by another key", func(t *testing.T) *x509.CertificateRequest {
			// The CSR carries p256's public key but the signature of another.
			a := csrFor(t, p256, x509.CertificateRequest{Subject: subj})
			b := csrFor(t, newP256(t), x509.CertificateRequest{Subject: subj})
			a.Signature = b.Signature
			return a
		}, certs.ErrBadCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr := tc.csr(t)
			pub, err := certs.CheckCSR(csr, dev)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckCSR: got error %v, want nil", err)
				}
				if !pub.Equal(csr.PublicKey) {
					t.Errorf("CheckCSR: got key %v, want the CSR's key %v", pub, csr.PublicKey)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CheckCSR: got error %v, want %v", err, tc.wantErr)
			}
			if pub != nil {
				t.Errorf("CheckCSR: got key %v with error, want nil", pub)
			}
		})
	}
}

func hasEKU(c *x509.Certificate, u x509.ExtKeyUsage) bool { return slices.Contains(c.ExtKeyUsage, u) }

func TestCAIssue(t *testing.T) {
	const validity = 30 * 24 * time.Hour
	const backdate = 5 * time.Minute
	tca := newTestCA(t, 365*24*time.Hour, certs.CAOptions{Validity: validity, Backdate: backdate})
	ctx := context.Background()

	for _, tc := range []struct {
		name         string
		req          certs.Request
		wantNotAfter time.Time
		wantServer   bool
	}{
		{
			name:         "device, default validity",
			req:          certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}},
			wantNotAfter: now.Add(validity),
		},
		{
			name:         "device, requested NotAfter",
			req:          certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-2"}, NotAfter: now.Add(48 * time.Hour)},
			wantNotAfter: now.Add(48 * time.Hour),
		},
		{
			name:         "device, NotAfter beyond the CA clamped",
			req:          certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-3"}, NotAfter: now.Add(10 * 365 * 24 * time.Hour)},
			wantNotAfter: now.Add(365 * 24 * time.Hour),
		},
		{
			name: "device, DNS names ignored",
			req: certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-4"},
				DNSNames: []string{"evil.example.com"}, IPs: []net.IP{net.IPv4(10, 0, 0, 1)}},
			wantNotAfter: now.Add(validity),
		},
		{
			name:         "admin",
			req:          certs.Request{Identity: identity.Identity{Role: identity.RoleAdmin, Name: "alice"}},
			wantNotAfter: now.Add(validity),
		},
		{
			name: "server with DNS and IPs",
			req: certs.Request{Identity: identity.Identity{Role: identity.RoleServer, Name: "fleetd"},
				DNSNames: []string{"localhost", "fleetd.example.com"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}},
			wantNotAfter: now.Add(validity),
			wantServer:   true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := newP256(t)
			tc.req.PublicKey = key.Public()
			leaf, err := tca.ca.Issue(ctx, tc.req)
			if err != nil {
				t.Fatalf("Issue: got error %v, want nil", err)
			}
			id, err := identity.Verify(leaf, tca.pool, now)
			if err != nil {
				t.Fatalf("identity.Verify: got error %v, want nil", err)
			}
			if id != tc.req.Identity {
				t.Errorf("identity.Verify identity: got %v, want %v", id, tc.req.Identity)
			}
			if err := leaf.CheckSignatureFrom(tca.root); err != nil {
				t.Errorf("CheckSignatureFrom(root): got error %v, want nil", err)
			}
			if !key.PublicKey.Equal(leaf.PublicKey) {
				t.Errorf("public key: got %v, want the requested key", leaf.PublicKey)
			}
			if got, want := leaf.Subject.CommonName, tc.req.Identity.Name; got != want {
				t.Errorf("CN: got %q, want %q", got, want)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.req.Identity.URI().String() {
				t.Errorf("URI SANs: got %v, want [%v]", leaf.URIs, tc.req.Identity.URI())
			}
			if !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
				t.Errorf("EKU: got %v, want clientAuth", leaf.ExtKeyUsage)
			}
			if got := hasEKU(leaf, x509.ExtKeyUsageServerAuth); got != tc.wantServer {
				t.Errorf("serverAuth EKU: got %v, want %v", got, tc.wantServer)
			}
			if tc.wantServer {
				if !slices.Equal(leaf.DNSNames, tc.req.DNSNames) {
					t.Errorf("DNS names: got %q, want %q", leaf.DNSNames, tc.req.DNSNames)
				}
				if len(leaf.IPAddresses) != len(tc.req.IPs) {
					t.Errorf("IPs: got %v, want %v", leaf.IPAddresses, tc.req.IPs)
				} else {
					for i, ip := range tc.req.IPs {
						if !leaf.IPAddresses[i].Equal(ip) {
							t.Errorf("IP %d: got %v, want %v", i, leaf.IPAddresses[i], ip)
						}
					}
				}
				if err := leaf.VerifyHostname("localhost"); err != nil {
					t.Errorf("VerifyHostname(localhost): got %v, want nil", err)
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: tca.pool, CurrentTime: now, DNSName: "fleetd.example.com"}); err != nil {
					t.Errorf("Verify as TLS server: got %v, want nil", err)
				}
			} else if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("SANs of a %s certificate: got DNS %q IP %v e-mail %q, want none",
					tc.req.Identity.Role, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA {
				t.Error("IsCA: got true, want false")
			}
			// Compact leaves: no basic constraints (CA:FALSE is the
			// default) and no subject key id; the authority key id stays.
			if leaf.BasicConstraintsValid {
				t.Error("BasicConstraintsValid: got true, want the extension left out")
			}
			if len(leaf.SubjectKeyId) != 0 {
				t.Errorf("SubjectKeyId: got %x, want none", leaf.SubjectKeyId)
			}
			if len(leaf.AuthorityKeyId) == 0 {
				t.Error("AuthorityKeyId: got none, want the CA's key id")
			}
			if leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
				t.Errorf("KeyUsage: got %v including certSign, want no certSign", leaf.KeyUsage)
			}
			if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
				t.Errorf("KeyUsage: got %v, want digitalSignature", leaf.KeyUsage)
			}
			if want := now.Add(-backdate); !leaf.NotBefore.Equal(want) {
				t.Errorf("NotBefore: got %v, want %v (now - Backdate)", leaf.NotBefore, want)
			}
			if !leaf.NotAfter.Equal(tc.wantNotAfter) {
				t.Errorf("NotAfter: got %v, want %v", leaf.NotAfter, tc.wantNotAfter)
			}
			if leaf.NotAfter.After(tca.root.NotAfter) {
				t.Errorf("NotAfter %v: got after the CA's %v, want clamped", leaf.NotAfter, tca.root.NotAfter)
			}
			if leaf.SerialNumber.Sign() <= 0 {
				t.Errorf("serial: got %v, want positive", leaf.SerialNumber)
			}
			if leaf.SerialNumber.BitLen() > 159 {
				t.Errorf("serial: got %d bits, want at most 159 (20 octets, RFC 5280)", leaf.SerialNumber.BitLen())
			}
			if !bytes.Equal(leaf.RawIssuer, tca.root.RawSubject) {
				t.Errorf("issuer: got %q, want the root's subject %q", leaf.Issuer, tca.root.Subject)
			}
			// Outside its validity it no longer verifies.
			if _, err := identity.Verify(leaf, tca.pool, leaf.NotAfter.Add(time.Second)); err == nil {
				t.Error("identity.Verify after NotAfter: got nil error, want expired")
			}
			if _, err := identity.Verify(leaf, tca.pool, leaf.NotBefore.Add(-time.Second)); err == nil {
				t.Error("identity.Verify before NotBefore: got nil error, want not yet valid")
			}
		})
	}

	t.Run("serials unique", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 20; i++ {
			leaf, err := tca.ca.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: newP256(t).Public()})
			if err != nil {
				t.Fatalf("Issue: got error %v, want nil", err)
			}
			s := leaf.SerialNumber.String()
			if seen[s] {
				t.Fatalf("serial %s: got it twice, want unique serials", s)
			}
			seen[s] = true
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		leaf, err := tca.ca.Issue(cctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: newP256(t).Public()})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Issue with cancelled context: got %v, %v, want error %v", leaf, err, context.Canceled)
		}
	})

	t.Run("not chaining to another root", func(t *testing.T) {
		other := newTestCA(t, 365*24*time.Hour, certs.CAOptions{})
		leaf, err := tca.ca.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: newP256(t).Public()})
		if err != nil {
			t.Fatalf("Issue: got error %v, want nil", err)
		}
		if id, err := identity.Verify(leaf, other.pool, now); err == nil {
			t.Errorf("identity.Verify against another root: got %v, nil, want an error", id)
		}
	})

	t.Run("clientAuth required", func(t *testing.T) {
		// identity.Verify requires clientAuth: a leaf without it (made here by
		// hand, signed by the same CA) must fail.
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dev-1"},
			URIs:      []*url.URL{identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}.URI()},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tca.root, newP256(t).Public(), tca.key)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := identity.Verify(leaf, tca.pool, now); err == nil {
			t.Errorf("identity.Verify of a serverAuth-only leaf: got %v, nil, want an error", id)
		}
	})
}

func TestCAOptionsDefaults(t *testing.T) {
	// Zero options: 90 days validity, 1 hour backdate; Now injected.
	tca := newTestCA(t, 10*365*24*time.Hour, certs.CAOptions{})
	leaf, err := tca.ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "d"}, PublicKey: newP256(t).Public()})
	if err != nil {
		t.Fatalf("Issue: got error %v, want nil", err)
	}
	if want := now.Add(90 * 24 * time.Hour); !leaf.NotAfter.Equal(want) {
		t.Errorf("default NotAfter: got %v, want %v", leaf.NotAfter, want)
	}
	if want := now.Add(-time.Hour); !leaf.NotBefore.Equal(want) {
		t.Errorf("default NotBefore: got %v, want %v", leaf.NotBefore, want)
	}
}

func TestCAClockInjected(t *testing.T) {
	// The CA reads its clock at every Issue, not once.
	key := newP256(t)
	root, err := certs.NewRoot(key, "ca", now, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clock := now
	ca, err := certs.NewCA(root, key, certs.CAOptions{Validity: time.Hour, Backdate: time.Second, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []time.Duration{0, 24 * time.Hour, 100 * 24 * time.Hour} {
		clock = now.Add(step)
		leaf, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "d"}, PublicKey: newP256(t).Public()})
		if err != nil {
			t.Fatalf("Issue at %v: got error %v, want nil", clock, err)
		}
		if want := clock.Add(-time.Second); !leaf.NotBefore.Equal(want) {
			t.Errorf("at +%v NotBefore: got %v, want %v", step, leaf.NotBefore, want)
		}
		if want := clock.Add(time.Hour); !leaf.NotAfter.Equal(want) {
			t.Errorf("at +%v NotAfter: got %v, want %v", step, leaf.NotAfter, want)
		}
	}
}

func TestNewRoot(t *testing.T) {
	key := newP256(t)
	root, err := certs.NewRoot(key, "fleet", now, 24*time.Hour)
	if err != nil {
		t.Fatalf("NewRoot: got error %v, want nil", err)
	}
	if !root.IsCA || !root.BasicConstraintsValid {
		t.Errorf("root: got IsCA %v BasicConstraintsValid %v, want true true", root.IsCA, root.BasicConstraintsValid)
	}
	if root.MaxPathLen != -1 {
		t.Errorf("root path length: got %d (zero %v), want unlimited (-1), for chains of cross certificates", root.MaxPathLen, root.MaxPathLenZero)
	}
	if root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root KeyUsage: got %v, want certSign", root.KeyUsage)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("self-signature: got %v, want nil", err)
	}
	if !key.PublicKey.Equal(root.PublicKey) {
		t.Error("root public key: got another key, want the signer's")
	}
	if want := now.Add(24 * time.Hour); !root.NotAfter.Equal(want) {
		t.Errorf("root NotAfter: got %v, want %v", root.NotAfter, want)
	}
	if !root.NotBefore.Before(now) {
		t.Errorf("root NotBefore: got %v, want before %v", root.NotBefore, now)
	}
	// Every leaf repeats the root's key id: 8 bytes of SHA-256 over the key.
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(spki); !bytes.Equal(root.SubjectKeyId, sum[:8]) {
		t.Errorf("root SubjectKeyId: got %x, want %x", root.SubjectKeyId, sum[:8])
	}
}

func TestNewCAMismatchedKey(t *testing.T) {
	key := newP256(t)
	root, err := certs.NewRoot(key, "fleet", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
		ok     bool
	}{
		{"matching key", key, true},
		{"other P-256 key", newP256(t), false},
		{"RSA key", rsaKey, false},
		{"signer without Equal", noEqualSigner{key}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, err := certs.NewCA(root, tc.signer, certs.CAOptions{})
			if tc.ok {
				if err != nil || ca == nil {
					t.Fatalf("NewCA: got %v, %v, want a CA and nil", ca, err)
				}
				if ca.Certificate() != root {
					t.Errorf("Certificate(): got %v, want the root", ca.Certificate().Subject)
				}
				return
			}
			if err == nil {
				t.Fatalf("NewCA: got nil error, want a key mismatch")
			}
			if ca != nil {
				t.Errorf("NewCA: got a CA with the error, want nil")
			}
		})
	}
}

// noEqualSigner hides the key's Equal method behind an anonymous public key.
type noEqualSigner struct{ k *ecdsa.PrivateKey }

type opaquePub struct{}

func (s noEqualSigner) Public() crypto.PublicKey { return opaquePub{} }
func (s noEqualSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, d, o)
}

// TestCrossSignChain checks what an anchor rotation relies on: a device that
// trusts only the first root accepts a leaf of the third through the chain
// of cross certificates, and one that trusts the third accepts it directly.
func TestCrossSignChain(t *testing.T) {
	now := time.Now()
	k1, k2, k3 := newP256(t), newP256(t), newP256(t)
	r1, err := certs.NewRoot(k1, "keyfleet CA", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := certs.NewRoot(k2, "keyfleet CA 2", now, 48*time.Hour)
	r3, _ := certs.NewRoot(k3, "keyfleet CA 3", now, 48*time.Hour)
	x2, err := certs.CrossSign(r2, r1, k1)
	if err != nil {
		t.Fatalf("CrossSign: %v", err)
	}
	x3, err := certs.CrossSign(r3, r2, k2)
	if err != nil {
		t.Fatalf("CrossSign: %v", err)
	}
	if x2.NotAfter.After(r1.NotAfter) {
		t.Errorf("cross certificate outlives its issuer: %v > %v", x2.NotAfter, r1.NotAfter)
	}
	ca, err := certs.NewCA(r3, k3, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leafKey := newP256(t)
	leaf, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "d"}, PublicKey: leafKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(x3)
	inter.AddCert(x2)
	for _, tc := range []struct {
		name  string
		roots []*x509.Certificate
		inter *x509.CertPool
		ok    bool
	}{
		{"first root through two crosses", []*x509.Certificate{r1}, inter, true},
		{"second root through one cross", []*x509.Certificate{r2}, inter, true},
		{"third root directly", []*x509.Certificate{r3}, nil, true},
		{"first root without the crosses", []*x509.Certificate{r1}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := x509.NewCertPool()
			for _, r := range tc.roots {
				pool.AddCert(r)
			}
			_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: tc.inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if (err == nil) != tc.ok {
				t.Errorf("verify: got err %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
