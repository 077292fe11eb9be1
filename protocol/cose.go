package protocol

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"
)

// COSE_Sign1 (RFC 9052 §4.2) is keyfleet's one single-signer envelope:
// protocol messages (Seal, Open) and firmware manifests (package firmware)
// use it with their own external AAD. It has exactly one accepted layout,
// with the key id in the protected header, covered by the signature:
//
//	18([
//	  h'a2 01 26 04 48 <kid>',  / protected: {1 (alg): -7 (ES256), 4 (kid): 8 bytes} /
//	  {},                        / unprotected: empty /
//	  h'<payload>',              / attached, never detached /
//	  h'<r || s>'                / 64 bytes, P-256 /
//	])
//
// in core deterministic encoding. The kid is KeyID of the signer: a
// receiver checks that it names the key it expects before verifying, so
// a message from a rotated-out key is refused by name, cheaply. (Anchor
// sets are COSE_Sign with two signers and carry the same protected header
// per signature; see package anchors.)

// sign1Tag starts a tagged COSE_Sign1: tag 18, then a 4-element array.
var sign1Tag = []byte{0xd2, 0x84}

// sign1ProtectedPrefix is the protected header {1: -7, 4: h'<8 bytes>'}
// without the kid: map(2), 1, -7, 4, bstr(8).
var sign1ProtectedPrefix = []byte{0xa2, 0x01, 0x26, 0x04, 0x48}

const (
	// es256Alg is ES256's COSE algorithm id.
	es256Alg = -7
	// es256SignatureSize is an ES256 signature: r || s, 32 bytes each.
	es256SignatureSize = 64
	// sign1Context is the context string of the Sig_structure for
	// COSE_Sign1 (RFC 9052 §4.4).
	sign1Context = "Signature1"
)

// COSEError is a refused COSE_Sign1: Err is ErrMalformed (shape) or
// ErrBadSignature (algorithm, key or signature). Packages with their own
// sentinels (firmware) map Err and keep Detail, without this package's
// prefix.
type COSEError struct {
	Err    error
	Detail string
}

func (e *COSEError) Error() string { return e.Err.Error() + ": cose: " + e.Detail }

// Unwrap returns Err, so errors.Is(err, ErrMalformed) and the like work.
func (e *COSEError) Unwrap() error { return e.Err }

func coseErr(sentinel error, format string, args ...any) error {
	return &COSEError{Err: sentinel, Detail: fmt.Sprintf(format, args...)}
}

// sign1 is the COSE_Sign1 array without its tag.
type sign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

// Sign1 is a parsed COSE_Sign1 whose signature has not been checked:
// nothing in it is trusted until Verify returns nil.
type Sign1 struct {
	// KID is the key id from the protected header: KeyIDSize bytes.
	KID []byte
	// Payload is the signed content.
	Payload []byte

	protected []byte
	signature []byte
}

// SignSign1 signs payload with key (an ECDSA P-256 crypto.Signer; an HSM
// handle works) into a tagged COSE_Sign1 with ES256, the key's KeyID in
// the protected header, and externalAAD bound into the signature (nil
// binds nothing).
func SignSign1(key crypto.Signer, payload, externalAAD []byte) ([]byte, error) {
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("protocol: cose sign: key must be ECDSA P-256, got %T", key.Public())
	}
	kid, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	if payload == nil {
		payload = []byte{}
	}
	protected := append(bytes.Clone(sign1ProtectedPrefix), kid...)
	digest, err := sign1Digest(protected, payload, externalAAD)
	if err != nil {
		return nil, err
	}
	der, err := key.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("protocol: cose sign: %w", err)
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 ||
		rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
		return nil, fmt.Errorf("protocol: cose sign: signer returned no ECDSA P-256 signature")
	}
	sig := make([]byte, es256SignatureSize)
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	body, err := MarshalCanonical(&sign1{Protected: protected, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	if err != nil {
		return nil, fmt.Errorf("protocol: cose sign: %w", err)
	}
	return append([]byte{0xd2}, body...), nil
}

// IsSign1 reports whether data starts like a tagged COSE_Sign1; Parse
// decides whether it is one.
func IsSign1(data []byte) bool { return bytes.HasPrefix(data, sign1Tag) }

// ParseSign1 parses a tagged COSE_Sign1 in the one layout above, strictly
// (StrictLimits, deterministic encoding, no trailing bytes). It verifies
// nothing; callers cap the size first. An algorithm other than ES256 is
// ErrBadSignature, every other deviation ErrMalformed, both as *COSEError.
func ParseSign1(data []byte) (*Sign1, error) {
	if !IsSign1(data) {
		return nil, coseErr(ErrMalformed, "not a tagged COSE_Sign1")
	}
	// 0xd2 is tag 18 in its only minimal form; the strict decoder forbids
	// tags, so it gets the array only.
	var m sign1
	if err := UnmarshalStrict(data[1:], &m); err != nil {
		return nil, coseErr(ErrMalformed, "%v", err)
	}
	switch {
	case m.Protected == nil:
		return nil, coseErr(ErrMalformed, "protected header missing")
	case m.Payload == nil:
		return nil, coseErr(ErrMalformed, "detached payload")
	case len(m.Signature) == 0:
		return nil, coseErr(ErrMalformed, "empty signature")
	}
	var prot map[int64]cbor.RawMessage
	if err := UnmarshalStrict(m.Protected, &prot); err != nil && len(m.Protected) > 0 {
		return nil, coseErr(ErrMalformed, "protected header: %v", err)
	}
	var alg int64
	if raw, ok := prot[1]; !ok {
		return nil, coseErr(ErrBadSignature, "no algorithm in the protected header")
	} else if err := UnmarshalStrict(raw, &alg); err != nil || alg != es256Alg {
		return nil, coseErr(ErrBadSignature, "algorithm %x, want ES256 (-7)", []byte(raw))
	}
	p := m.Protected
	if len(p) != len(sign1ProtectedPrefix)+KeyIDSize || !bytes.HasPrefix(p, sign1ProtectedPrefix) {
		return nil, coseErr(ErrMalformed, "protected header must be exactly {alg: ES256, kid: %d bytes}", KeyIDSize)
	}
	if !bytes.Equal(m.Unprotected, []byte{0xa0}) {
		return nil, coseErr(ErrMalformed, "unprotected header must be empty")
	}
	again, err := MarshalCanonical(&m)
	if err != nil || !bytes.Equal(again, data[1:]) {
		return nil, coseErr(ErrMalformed, "envelope %v", errNotCanonical)
	}
	return &Sign1{KID: p[len(sign1ProtectedPrefix):], Payload: m.Payload, protected: p, signature: m.Signature}, nil
}

// Verify checks that the kid names pub (an ECDSA P-256 public key) and
// that the signature verifies under pub with externalAAD. Every failure is
// ErrBadSignature.
func (s *Sign1) Verify(pub crypto.PublicKey, externalAAD []byte) error {
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || ek == nil || ek.Curve != elliptic.P256() {
		return coseErr(ErrBadSignature, "key type %T, want ECDSA P-256", pub)
	}
	kid, err := KeyID(ek)
	if err != nil {
		return coseErr(ErrBadSignature, "%v", err)
	}
	if !bytes.Equal(kid, s.KID) {
		return coseErr(ErrBadSignature, "kid %x is not key %x", s.KID, kid)
	}
	if len(s.signature) != es256SignatureSize {
		return coseErr(ErrBadSignature, "signature of %d bytes, want %d", len(s.signature), es256SignatureSize)
	}
	digest, err := sign1Digest(s.protected, s.Payload, externalAAD)
	if err != nil {
		return err
	}
	r := new(big.Int).SetBytes(s.signature[:32])
	sv := new(big.Int).SetBytes(s.signature[32:])
	if !ecdsa.Verify(ek, digest, r, sv) {
		return coseErr(ErrBadSignature, "verification error")
	}
	return nil
}

// sign1Digest is SHA-256 over the Sig_structure (RFC 9052 §4.4):
// ["Signature1", protected, external_aad, payload]. An absent external AAD
// is the empty byte string, never null.
func sign1Digest(protected, payload, externalAAD []byte) ([]byte, error) {
	if externalAAD == nil {
		externalAAD = []byte{}
	}
	tbs, err := MarshalCanonical([]any{sign1Context, protected, externalAAD, payload})
	if err != nil {
		return nil, fmt.Errorf("protocol: encode Sig_structure: %w", err)
	}
	sum := sha256.Sum256(tbs)
	return sum[:], nil
}
