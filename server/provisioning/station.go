package provisioning

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// Engine registers devices with their first identity; *rotation.Engine
// satisfies it.
type Engine interface {
	Provision(ctx context.Context, device string, csr *x509.CertificateRequest, birth *x509.Certificate, actor string) (*x509.Certificate, error)
	ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) []rotation.ProvisionResult
}

// Anchors gives the current trust anchors; *trust.Chain satisfies it.
type Anchors interface {
	Root() *x509.Certificate
	Current() *anchors.Signed
}

// Bundle is the trust material a device installs with its credentials.
type Bundle struct {
	// Root is the current CA root.
	Root *x509.Certificate
	// UpdateKey verifies delegations of the online signing key.
	UpdateKey *ecdsa.PublicKey
	// Anchors is the current signed anchor set.
	Anchors []byte
	// Broker is the address devices connect to.
	Broker string
}

// Credential is what one registration issued.
type Credential struct {
	Cert  *x509.Certificate
	Birth *x509.Certificate // nil unless asked for
}

// Result is one device's outcome in a batch.
type Result struct {
	Credential
	Err error
}

// Station registers devices. It is safe for concurrent use.
type Station struct {
	engine  Engine
	birth   *certs.CA
	anchors Anchors
	broker  string
}

// New returns a station that registers through engine, issues birth
// credentials with birth and tells devices to connect to broker.
func New(engine Engine, birth *certs.CA, anchors Anchors, broker string) *Station {
	return &Station{engine: engine, birth: birth, anchors: anchors, broker: broker}
}

// Bundle returns the trust material that goes with a registration.
func (s *Station) Bundle() (Bundle, error) {
	cur := s.anchors.Current()
	upd, err := cur.UpdatePublicKey()
	if err != nil {
		return Bundle{}, fmt.Errorf("provisioning: update key of anchors v%d: %w", cur.Version, err)
	}
	return Bundle{Root: s.anchors.Root(), UpdateKey: upd, Anchors: cur.Raw, Broker: s.broker}, nil
}

// Provision registers device with the key of csr and, with birthCSR, a
// birth credential for the key of birthCSR.
func (s *Station) Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (Credential, error) {
	var c Credential
	if birthCSR != nil {
		var err error
		if c.Birth, err = s.issueBirth(ctx, device, birthCSR); err != nil {
			return Credential{}, err
		}
	}
	var err error
	if c.Cert, err = s.engine.Provision(ctx, device, csr, c.Birth, actor); err != nil {
		return Credential{}, err
	}
	return c, nil
}

// ProvisionBatch registers many devices; each item succeeds or fails on
// its own, and the results are in item order.
func (s *Station) ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) []Result {
	out := make([]Result, len(items))
	var good []rotation.ProvisionItem
	var idx []int
	for i := range items {
		if items[i].BirthCSR != nil {
			if items[i].Birth, out[i].Err = s.issueBirth(ctx, items[i].ID, items[i].BirthCSR); out[i].Err != nil {
				continue
			}
		}
		good, idx = append(good, items[i]), append(idx, i)
	}
	for k, r := range s.engine.ProvisionBatch(ctx, good, actor) {
		i := idx[k]
		if out[i].Err = r.Err; r.Err == nil {
			out[i].Cert, out[i].Birth = r.Cert, items[i].Birth
		}
	}
	return out
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
	return s.birth.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleIDevID, Name: device}, PublicKey: pub})
}
