package broker

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/server/policy"
)

// Trust is what the broker checks client certificates against. It is read
// on every connect, so fleetd can add a CA root when the anchors rotate
// without restarting the listener.
type Trust interface {
	// Roots are the CA roots identity (and fleetd's own) certificates
	// chain to: every root of the anchor chain not revoked.
	Roots() *x509.CertPool
	// BirthRoots are the manufacturer roots of birth credentials (IDevID).
	BirthRoots() *x509.CertPool
}

// StaticTrust is a Trust that never changes (tests, external tooling).
type StaticTrust struct {
	Identity *x509.CertPool
	Birth    *x509.CertPool
}

// Roots implements Trust.
func (s StaticTrust) Roots() *x509.CertPool { return s.Identity }

// BirthRoots implements Trust.
func (s StaticTrust) BirthRoots() *x509.CertPool {
	if s.Birth == nil {
		return x509.NewCertPool()
	}
	return s.Birth
}

// errUntrusted: a client certificate chains to no root the broker knows.
var errUntrusted = errors.New("broker: certificate not trusted")

// Classify decides what a client presenting chain (leaf first) may do at
// now. It is the broker's whole authentication decision apart from the
// credential check against the store, kept pure for table tests:
//   - an identity or fleetd certificate that verifies now gets full access;
//   - a device identity that verifies except for having expired gets
//     renew-only access while within the policy's window after expiry
//     (it may still renew with its old key), and is refused after;
//   - a birth credential (IDevID) that verifies against the manufacturer
//     roots gets enroll-only access.
func Classify(chain []*x509.Certificate, trust Trust, pol policy.Policy, now time.Time) (identity.Identity, policy.Access, error) {
	if len(chain) == 0 {
		return identity.Identity{}, policy.AccessNone, errors.New("broker: no client certificate")
	}
	leaf := chain[0]
	id, err := identity.Of(leaf)
	if err != nil {
		return identity.Identity{}, policy.AccessNone, err
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verify := func(roots *x509.CertPool, at time.Time) error {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	switch id.Role {
	case identity.RoleIDevID:
		if err := verify(trust.BirthRoots(), now); err != nil {
			return id, policy.AccessNone, fmt.Errorf("%w: birth credential: %v", errUntrusted, err)
		}
		return id, policy.AccessEnroll, nil
	case identity.RoleDevice, identity.RoleServer:
	default:
		return id, policy.AccessNone, fmt.Errorf("broker: role %s may not connect", id.Role)
	}
	roots := trust.Roots()
	err = verify(roots, now)
	if err == nil {
		return id, policy.AccessFull, nil
	}
	var inv x509.CertificateInvalidError
	if id.Role != identity.RoleDevice || !errors.As(err, &inv) || inv.Reason != x509.Expired || !now.After(leaf.NotAfter) {
		return id, policy.AccessNone, fmt.Errorf("%w: %v", errUntrusted, err)
	}
	// Expired: is it otherwise sound, and within the window?
	if err := verify(roots, leaf.NotAfter); err != nil {
		return id, policy.AccessNone, fmt.Errorf("%w: %v", errUntrusted, err)
	}
	acc := pol.IdentityAccess(leaf.NotAfter, now)
	if acc != policy.AccessRenew {
		return id, acc, fmt.Errorf("broker: %s: certificate expired %v ago, past the renewal window", id, now.Sub(leaf.NotAfter).Round(time.Second))
	}
	return id, acc, nil
}

// ChainsToFleet reports, for the TLS handshake, whether chain (leaf first,
// as presented) chains to any root the fleet trusts: the identity roots
// (every anchor root not revoked, read now, so roots an anchor rotation
// added count at once) or the birth roots. It is checked before any MQTT
// byte is read, so a client with a certificate from anywhere else gets no
// further than the handshake.
//
// Expiry is not its business: the chain is verified at a time within the
// leaf's validity (now, clamped to it), so an expired identity that may
// still renew reaches the auth hook, where Classify decides on fleetd's
// clock. Nor are roles and key usages: Classify checks those too.
func ChainsToFleet(chain []*x509.Certificate, trust Trust, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("broker: no client certificate")
	}
	leaf := chain[0]
	at := now
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var errs []error
	for _, roots := range []*x509.CertPool{trust.Roots(), trust.BirthRoots()} {
		if roots == nil {
			continue
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w: chains to no fleet CA: %v", errUntrusted, errors.Join(errs...))
}
