package provisioning

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/fsutil"
	"github.com/keyfleet/keyfleet/protocol"
)

// BirthValidity is the lifetime of the manufacturer root; birth
// credentials live as long as devices do.
const BirthValidity = 30 * 365 * 24 * time.Hour

// Keys is the key custody the birth CA needs.
type Keys interface {
	GenerateP256(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
}

// OpenBirthCA loads the manufacturer CA that issues birth credentials:
// its key (label) in custody, its root certificate in the file path. It
// makes both if the deployment predates them.
func OpenBirthCA(keys Keys, label, path string, now func() time.Time) (*certs.CA, error) {
	var root *x509.Certificate
	if cs, err := certs.LoadPEM(path); err == nil {
		root = cs[0]
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("provisioning: birth CA: %w", err)
	}
	key, err := keys.Signer(label)
	if err != nil {
		if key, err = keys.GenerateP256(label); err != nil {
			return nil, err
		}
	}
	if root == nil {
		if root, err = certs.NewRoot(key, "keyfleet IDevID CA", now(), BirthValidity); err != nil {
			return nil, err
		}
		if err := fsutil.WriteAtomic(path, certs.EncodePEM(root), 0o644); err != nil {
			return nil, fmt.Errorf("provisioning: birth CA: %w", err)
		}
	}
	return certs.NewCA(root, key, certs.CAOptions{Validity: BirthValidity, Now: now})
}

// issueBirth issues a birth credential (IDevID) for device.
func (s *Station) issueBirth(ctx context.Context, device string, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if err := protocol.ValidateDeviceID(device); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: birth CSR: %v", certs.ErrBadCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: birth key must be ECDSA P-256", certs.ErrBadCSR)
	}
	if csr.Subject.CommonName != device {
		return nil, fmt.Errorf("%w: birth CSR names %q", certs.ErrCSRIdentity, csr.Subject.CommonName)
	}
	return s.birth.Issue(ctx, certs.Request{Identity: certs.Identity{Role: certs.RoleIDevID, Name: device}, PublicKey: pub})
}
