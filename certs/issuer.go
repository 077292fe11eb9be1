package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"go.step.sm/crypto/x509util"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// Issuer turns an accepted request into a certificate. Implementations must
// be safe for concurrent use and must not return before the certificate is
// final (a later call for the same request may issue another one: callers
// that need idempotence record what they got).
type Issuer interface {
	Issue(ctx context.Context, req Request) (*x509.Certificate, error)
}

// Request asks for a certificate for PublicKey naming Identity.
type Request struct {
	Identity  identity.Identity
	PublicKey crypto.PublicKey
	// NotAfter is the end of validity; zero means the issuer's default.
	NotAfter time.Time
	// DNSNames and IPs are added for server certificates.
	DNSNames []string
	IPs      []net.IP
	// CSR is the requester's own signed request (DER), already checked by
	// the caller (CheckCSR). The embedded CA needs only PublicKey; an
	// external CA (step-ca) signs nothing without the requester's proof of
	// possession, so callers that have one pass it on.
	CSR []byte
}

// Errors of enrolment policy.
var (
	// ErrBadCSR: the CSR's signature does not verify, or its key is not P-256.
	ErrBadCSR = errors.New("certs: bad certificate request")
	// ErrCSRIdentity: the CSR names someone other than the requester.
	ErrCSRIdentity = errors.New("certs: certificate request names another identity")
)

// CheckCSR applies the enrolment policy to a device's CSR: its signature
// verifies, its key is ECDSA P-256, its common name is device and its SANs,
// if any, are exactly the device's identity URI. It returns the public key.
func CheckCSR(csr *x509.CertificateRequest, device string) (*ecdsa.PublicKey, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: key must be ECDSA P-256", ErrBadCSR)
	}
	if csr.Subject.CommonName != device {
		return nil, fmt.Errorf("%w: common name %q, requester %q", ErrCSRIdentity, csr.Subject.CommonName, device)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("%w: unexpected DNS, IP or e-mail names", ErrCSRIdentity)
	}
	want := identity.Identity{Role: identity.RoleDevice, Name: device}.URI().String()
	for _, u := range csr.URIs {
		if u.String() != want {
			return nil, fmt.Errorf("%w: URI %q, requester %q", ErrCSRIdentity, u.String(), want)
		}
	}
	return pub, nil
}

// CAOptions configures the embedded CA. Zero values take the defaults.
type CAOptions struct {
	// Validity of issued certificates; 0 means 90 days.
	Validity time.Duration
	// Backdate is subtracted from NotBefore to tolerate clock skew; 0 means
	// 1 hour. Devices have cheap clocks: one running a few minutes behind
	// must not find its brand-new certificate "not yet valid" (the
	// simulator's skew fault showed rotations stalling on exactly that).
	Backdate time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// CA is keyfleet's embedded certificate authority: a certificate and the
// crypto.Signer (usually an HSM key) that signs with it. Safe for concurrent
// use if the signer is.
type CA struct {
	cert   *x509.Certificate
	signer crypto.Signer
	opts   CAOptions
}

var _ Issuer = (*CA)(nil)

// NewCA returns a CA that signs with signer under cert. It checks that the
// two belong together.
func NewCA(cert *x509.Certificate, signer crypto.Signer, opts CAOptions) (*CA, error) {
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("certs: CA key does not match CA certificate")
	}
	if opts.Validity == 0 {
		opts.Validity = 90 * 24 * time.Hour
	}
	if opts.Backdate == 0 {
		opts.Backdate = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &CA{cert: cert, signer: signer, opts: opts}, nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Issue signs a leaf for req.Identity. Device and admin certificates get the
// clientAuth usage; server certificates also get serverAuth and the request's
// DNS names and IPs.
func (ca *CA) Issue(ctx context.Context, req Request) (*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := ca.opts.Now()
	notAfter := req.NotAfter
	if notAfter.IsZero() {
		notAfter = now.Add(ca.opts.Validity)
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Identity.Name},
		URIs:         []*urlURL{req.Identity.URI()},
		NotBefore:    now.Add(-ca.opts.Backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		// Every byte of a leaf travels to a device at each rotation. A
		// leaf's subject key id is only a SHOULD (RFC 5280 §4.2.1.2) and
		// basic constraints CA:FALSE is the default: leaving both out saves
		// 45 bytes. The authority key id stays, for path building once
		// roots are cross-signed. (An empty, non-nil SubjectKeyId keeps
		// x509util from adding one.)
		SubjectKeyId: []byte{},
	}
	if req.Identity.Role == identity.RoleServer {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = req.DNSNames
		tmpl.IPAddresses = req.IPs
	}
	cert, err := x509util.CreateCertificate(tmpl, ca.cert, req.PublicKey, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("certs: issue %s: %w", req.Identity, err)
	}
	return cert, nil
}

// NewRoot makes a self-signed CA certificate for signer.
func NewRoot(signer crypto.Signer, name string, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("certs: create root %q: %w", name, err)
	}
	ski := sha256.Sum256(spki)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name}, // repeated as issuer in every leaf: keep it short
		// Every leaf repeats the root's key id as its authority key id.
		// Go's default is 20 bytes; 8 bytes of SHA-256 over the key (the
		// keyfleet key id, protocol.KeyID) name one of a fleet's few roots
		// just as well (RFC 5280 §4.2.1.2 leaves the method open) and
		// save 12 bytes in every certificate delivery.
		SubjectKeyId:          ski[:8],
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// No path length limit: when the anchors rotate, a device that
		// trusts only this root reaches the new one through a chain of
		// cross certificates (CrossSign), and Go enforces a root's limit
		// on that chain.
		MaxPathLen: -1,
	}
	cert, err := x509util.CreateCertificate(tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("certs: create root %q: %w", name, err)
	}
	return cert, nil
}

func randomSerial() (*big.Int, error) {
	// 72 random bits: above the 64 bits of CSPRNG output CA/B Forum rules
	// ask of public CAs, and eight bytes shorter in every delivery than 128.
	n, err := cryptoRandInt(new(big.Int).Lsh(big.NewInt(1), 72))
	if err != nil {
		return nil, fmt.Errorf("certs: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// CrossSign certifies root's key and subject under issuer (the previous
// root, whose key is signer): a device that trusts only the previous root
// still accepts chains that end in root, so a root rotation never strands a
// device that has not updated its anchors yet. The cross certificate's
// validity is capped by the issuer's.
func CrossSign(root, issuer *x509.Certificate, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := root.NotAfter
	if issuer.NotAfter.Before(notAfter) {
		notAfter = issuer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               root.Subject,
		NotBefore:             root.NotBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1, // chains of crosses: see NewRoot
		SubjectKeyId:          root.SubjectKeyId,
	}
	cert, err := x509util.CreateCertificate(tmpl, issuer, root.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("certs: cross-sign %q by %q: %w", root.Subject.CommonName, issuer.Subject.CommonName, err)
	}
	return cert, nil
}
