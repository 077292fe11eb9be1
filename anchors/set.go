package anchors

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/keyfleet/keyfleet/protocol"
)

// Limits of the encoding. Decoders check them before doing anything else
// with the input.
const (
	// MaxSetSize caps one signed set. A set with a P-256 root certificate
	// like certs.NewRoot makes, two SPKI keys, a Prev hash and two ES256
	// signatures is about 800 bytes; 2 KiB leaves room for a longer root
	// certificate and a full revocation list while bounding what a hostile
	// peer can make a device parse.
	MaxSetSize = 2048

	// MaxChainBytes caps an encoded chain (EncodeChain). 16 KiB holds
	// about 20 sets, more than DefaultMaxSteps, so history can ride along.
	// It is larger than protocol.MaxPacketSize: a chain that goes through
	// the broker must also fit its packet cap (protocol.Anchors carries at
	// most a few sets for that reason).
	MaxChainBytes = 16 << 10

	// MaxChainLen caps the entries of an encoded chain: more than fit in
	// MaxChainBytes with realistic sets, and under the decoder's array cap.
	MaxChainLen = 32

	// MaxSignatures caps the signatures of one signed set. Two are
	// required; the decoder accepts a few more so that Walk can refuse an
	// extra signature with ErrUnknownKey, which says more than a parse
	// error would.
	MaxSignatures = 4

	// MaxRevoked caps a set's revocation list. Anchor-level revocations are
	// rare events (a compromised update, online or firmware key) and the
	// list only grows, so 64 ids (576 bytes) is years of them; it is also
	// the decoder's array cap.
	MaxRevoked = 64

	// KeyIDSize is the length of a key id, as everywhere in keyfleet.
	KeyIDSize = protocol.KeyIDSize
)

// Set is one version of the fleet's trust anchors: what a device believes
// about the server's keys. Sets are never edited; the server issues the
// next version, signed by this one's root and update keys (see Next), and
// devices walk from one to the next (see Walk).
//
// On the wire a Set is a CBOR map with integer keys in core deterministic
// encoding (RFC 8949 §4.2.1), and the decoder accepts only that encoding:
//
//	anchor-set = {
//	  1: uint .size 4,       ; Version, >= 1
//	  2: bstr,               ; Root: DER X.509 CA certificate, P-256 key
//	  3: bstr,               ; UpdateKey: DER SubjectPublicKeyInfo, P-256
//	  4: bstr,               ; FirmwareKey: DER SubjectPublicKeyInfo, P-256
//	  ? 5: [+ bstr .size 8], ; Revoked: key ids, strictly ascending
//	  ? 6: bstr .size 32,    ; Prev: SHA-256 of the previous signed set; absent iff Version == 1
//	  7: uint,               ; IssuedAt: Unix seconds, > 0
//	  ? 8: [+ bstr],         ; Issuers: DER CA certificates of an external issuer
//	}
type Set struct {
	// Version numbers sets from 1 up, one step at a time, so that a device
	// can tell a newer set from a replayed older one.
	Version uint32 `cbor:"1,keyasint"`
	// Root is the DER certificate of the current CA root: new device
	// certificates chain to it, and its key co-signs the next set.
	Root []byte `cbor:"2,keyasint"`
	// UpdateKey is the server's update-signing key (PKIX SPKI DER, P-256),
	// held in the HSM. It certifies the short-lived online keys that sign
	// downlinks (protocol.Delegation) and co-signs the next set.
	UpdateKey []byte `cbor:"3,keyasint"`
	// FirmwareKey is the firmware-signing key (PKIX SPKI DER, P-256).
	// It never signs sets: a firmware signer cannot move the anchors.
	FirmwareKey []byte `cbor:"4,keyasint"`
	// Revoked lists the ids (protocol.KeyID) of every key revoked so far,
	// in this set and all before it, in ascending byte order. Cumulative,
	// because a device keeps only its current set: a device provisioned
	// with this set must learn every revocation from it. Walk refuses a set
	// that drops an id (ErrRevocationDropped) and Next carries the previous
	// list forward. Beyond anchor keys, the rest of the device refuses
	// delegations, firmware and certificates signed by a listed key.
	Revoked [][]byte `cbor:"5,keyasint,omitempty"`
	// Prev is the SHA-256 of the previous signed set (Signed.Hash), binding
	// each set to one history: two sets claiming the same predecessor
	// version but different predecessors are a fork. Empty for version 1.
	Prev []byte `cbor:"6,keyasint,omitempty"`
	// IssuedAt is when the server issued the set, Unix seconds. It is
	// informational: Walk has no clock and orders sets by Version only.
	IssuedAt uint64 `cbor:"7,keyasint"`
	// Issuers are the DER CA certificates (roots and intermediates) of an
	// external issuer such as step-ca that signs device certificates in the
	// fleet CA's stead. A device checks a new identity certificate against
	// Root plus these, so certificates from that issuer install by rotation;
	// they never sign sets nor the server's TLS certificate. Optional and
	// omitted when empty, so sets without it encode as before, byte for byte.
	Issuers [][]byte `cbor:"8,keyasint,omitempty"`
}

// MaxIssuers caps a set's issuer certificates: a root and an intermediate
// or two, and room for a second issuer's root during a switch.
const MaxIssuers = 4

// IssuerPools parses Issuers and sorts them into roots (self-signed) and
// intermediates, the pools a device verifies an identity certificate with
// next to Root. Both are empty, never nil, for a set without issuers.
func (s *Set) IssuerPools() (roots, intermediates *x509.CertPool, err error) {
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for i, der := range s.Issuers {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: issuer certificate %d: %v", ErrMalformed, i, err)
		}
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, nil, fmt.Errorf("%w: issuer certificate %d is not a CA", ErrMalformed, i)
		}
		if bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
		} else {
			intermediates.AddCert(c)
		}
	}
	return roots, intermediates, nil
}

// RootCert parses the root certificate, for the pool that device and
// broker certificates are verified against.
func (s *Set) RootCert() (*x509.Certificate, error) {
	c, err := x509.ParseCertificate(s.Root)
	if err != nil {
		return nil, fmt.Errorf("%w: root certificate: %v", ErrMalformed, err)
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return nil, fmt.Errorf("%w: root certificate is not a CA", ErrMalformed)
	}
	if _, err := p256(c.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: root certificate: %v", ErrMalformed, err)
	}
	return c, nil
}

// RootPublicKey returns the CA root's key, one of the two keys that sign
// the next set.
func (s *Set) RootPublicKey() (*ecdsa.PublicKey, error) {
	c, err := s.RootCert()
	if err != nil {
		return nil, err
	}
	return p256(c.PublicKey)
}

// UpdatePublicKey returns the update-signing key, which verifies online-key
// delegations and is the other key that signs the next set.
func (s *Set) UpdatePublicKey() (*ecdsa.PublicKey, error) {
	return parseKey("update key", s.UpdateKey)
}

// FirmwarePublicKey returns the key firmware manifests must be signed with.
func (s *Set) FirmwarePublicKey() (*ecdsa.PublicKey, error) {
	return parseKey("firmware key", s.FirmwareKey)
}

// SigningKeys returns the two keys whose signatures the next set needs:
// the root's key first, then the update key.
func (s *Set) SigningKeys() ([]*ecdsa.PublicKey, error) {
	root, err := s.RootPublicKey()
	if err != nil {
		return nil, err
	}
	update, err := s.UpdatePublicKey()
	if err != nil {
		return nil, err
	}
	return []*ecdsa.PublicKey{root, update}, nil
}

// IsRevoked reports whether the set revokes the key with id kid. Devices
// ask it before trusting anything signed by a key the set does not name
// itself: a delegation, a firmware manifest, an intermediate.
func (s *Set) IsRevoked(kid []byte) bool {
	_, found := slices.BinarySearchFunc(s.Revoked, kid, bytes.Compare)
	return found
}

// validate checks what the CBOR schema cannot: the rules every accepted
// set obeys. Sign refuses what Parse would refuse.
func (s *Set) validate() error {
	if s.Version == 0 {
		return fmt.Errorf("%w: version 0", ErrMalformed)
	}
	if s.IssuedAt == 0 {
		return fmt.Errorf("%w: no issued-at", ErrMalformed)
	}
	keys, err := s.SigningKeys()
	if err != nil {
		return err
	}
	fw, err := s.FirmwarePublicKey()
	if err != nil {
		return err
	}
	var kids [3][]byte
	for i, k := range []*ecdsa.PublicKey{keys[0], keys[1], fw} {
		if kids[i], err = protocol.KeyID(k); err != nil {
			return fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	// One key, one role: a firmware signer must not be able to sign sets,
	// and the two set signatures must come from two different keys.
	if bytes.Equal(kids[0], kids[1]) || bytes.Equal(kids[0], kids[2]) || bytes.Equal(kids[1], kids[2]) {
		return fmt.Errorf("%w: root, update and firmware keys are not distinct", ErrMalformed)
	}
	switch {
	case s.Version == 1 && len(s.Prev) != 0:
		return fmt.Errorf("%w: version 1 has a previous set", ErrMalformed)
	case s.Version > 1 && len(s.Prev) != sha256.Size:
		return fmt.Errorf("%w: prev is %d bytes, want %d", ErrMalformed, len(s.Prev), sha256.Size)
	}
	if len(s.Issuers) > MaxIssuers {
		return fmt.Errorf("%w: %d issuer certificates, over %d", ErrMalformed, len(s.Issuers), MaxIssuers)
	}
	if _, _, err := s.IssuerPools(); err != nil {
		return err
	}
	if len(s.Revoked) > MaxRevoked {
		return fmt.Errorf("%w: %d revoked ids, over %d", ErrMalformed, len(s.Revoked), MaxRevoked)
	}
	for i, id := range s.Revoked {
		if len(id) != KeyIDSize {
			return fmt.Errorf("%w: revoked id %x is %d bytes, want %d", ErrMalformed, id, len(id), KeyIDSize)
		}
		if i > 0 && bytes.Compare(s.Revoked[i-1], id) >= 0 {
			return fmt.Errorf("%w: revoked ids not strictly ascending at %x", ErrMalformed, id)
		}
	}
	for _, kid := range kids {
		if s.IsRevoked(kid) {
			return fmt.Errorf("%w: the set revokes its own key %x", ErrMalformed, kid)
		}
	}
	return nil
}

// p256 accepts only ECDSA P-256 keys, the one algorithm (ES256) of the
// protocol.
func p256(pub any) (*ecdsa.PublicKey, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is %T, want ECDSA P-256", pub)
	}
	return k, nil
}

// parseKey parses a PKIX SubjectPublicKeyInfo that must be a P-256 key in
// its canonical DER form, so that a key has one encoding and one id.
func parseKey(what string, der []byte) (*ecdsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	k, err := p256(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	again, err := x509.MarshalPKIXPublicKey(k)
	if err != nil || !bytes.Equal(again, der) {
		return nil, fmt.Errorf("%w: %s: not canonical DER", ErrMalformed, what)
	}
	return k, nil
}
