package identity

import (
	"crypto/x509"
	"fmt"
	"time"
)

// Verify checks that leaf chains to roots at time now for client
// authentication and returns its identity. A device checks each new
// certificate of its own this way before it stores it; the broker checks
// every client this way.
func Verify(leaf *x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	return VerifyChain(leaf, roots, nil, now)
}

// VerifyChain is Verify with intermediates: an external issuer such as
// step-ca signs device certificates with an intermediate the certificate
// message does not carry, so the device supplies it from its anchor set.
func VerifyChain(leaf *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) (Identity, error) {
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("identity: verify %q: %w", leaf.Subject.CommonName, err)
	}
	return Of(leaf)
}
