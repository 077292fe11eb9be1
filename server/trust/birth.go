package trust

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/fsutil"
)

// BirthValidity is the lifetime of the manufacturer root; birth
// credentials live as long as devices do.
const BirthValidity = 30 * 365 * 24 * time.Hour

// BirthCA is the manufacturer CA that issues birth credentials (IDevID):
// fleetd plays the factory for fleetctl device add and the simulator.
func (s *Service) BirthCA() *certs.CA { return s.birth }

// BirthRoots implements broker.Trust's re-enrolment half: the roots birth
// credentials chain to.
func (s *Service) BirthRoots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.birth.Certificate())
	return p
}

// OpenBirthCA loads the manufacturer CA that issues birth credentials:
// its key (label) in custody, its root certificate in the file path. It
// makes both if the deployment predates them.
func OpenBirthCA(keys Keys, label, path string, now func() time.Time) (*certs.CA, error) {
	var root *x509.Certificate
	if cs, err := identity.LoadPEM(path); err == nil {
		root = cs[0]
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("trust: birth CA: %w", err)
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
		if err := fsutil.WriteAtomic(path, identity.EncodePEM(root), 0o644); err != nil {
			return nil, fmt.Errorf("trust: birth CA: %w", err)
		}
	}
	return certs.NewCA(root, key, certs.CAOptions{Validity: BirthValidity, Now: now})
}
