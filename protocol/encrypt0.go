package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// Data keys travel to a device as a tagged COSE_Encrypt0 (RFC 9052 §5.2)
// in the "integrated encryption" mode of draft-ietf-cose-hpke: HPKE (RFC
// 9180, base mode, single shot) seals the plaintext itself to the device's
// P-256 identity key, so there is no content-encryption key and no
// recipient structure. On the wire:
//
//	16([
//	  h'a1011823',               / protected: {1 (alg): 35 (HPKE-0)} /
//	  {4 (kid): h'<8 bytes>',     / KeyID of the recipient's identity key /
//	   -4 (ek): h'04<64 bytes>'}, / HPKE enc: ephemeral P-256 point /
//	  h'<ciphertext || GCM tag>'
//	])
//
// The HPKE aad is the COSE Enc_structure ["Encrypt0", protected,
// external_aad], with the same device binding as COSE_Sign1's external AAD
// (externalAAD), so a key sealed for one device does not open as another's
// even if both shared an identity key. The HPKE info is empty, the draft's
// default: the Enc_structure already binds the algorithm and the audience,
// and an empty info keeps us interoperable with other COSE-HPKE
// implementations.
//
// HPKE base mode does not authenticate the sender: anyone holding the
// device's public key can seal to it. Authenticity comes from the signed
// message that carries the sealed key, never from the encryption.

// Codepoints of draft-ietf-cose-hpke. IANA has not assigned them yet: the
// draft lists them as "TBD (Assumed: N)", and these are those assumed
// values, taken from the working group's 2026 editor's copy
// (github.com/cose-wg/draft-ietf-cose-hpke, after draft -24; -27 is the
// latest revision published), whose HPKE-0 example TestEncrypt0DraftExample
// decrypts. If the RFC assigns different values, change them here: the
// algorithm sits in the protected header, so peers on either side of the
// change refuse each other's messages (ErrDecrypt) rather than decrypting
// them wrongly.
const (
	// AlgorithmHPKE0 is the COSE algorithm "HPKE-0" (TBD1, assumed 35):
	// HPKE integrated encryption with DHKEM(P-256, HKDF-SHA256),
	// HKDF-SHA256 and AES-128-GCM. P-256 because that is the device's
	// identity key; AES-128 matches the ~128-bit strength of P-256, so
	// AES-256 would buy nothing even for a 32-byte data key.
	AlgorithmHPKE0 cose.Algorithm = 35

	// HeaderLabelEncapsulatedKey is the COSE header parameter "ek" (TBD11,
	// assumed -4): HPKE's enc output, here the sender's ephemeral P-256
	// public key as an uncompressed point. It goes in the unprotected
	// header, as the draft requires; it needs no protection of its own
	// because the HPKE key schedule depends on it.
	HeaderLabelEncapsulatedKey int64 = -4

	// MaxEncrypt0Size caps a sealed COSE_Encrypt0. A sealed 32-byte data
	// key is 136 bytes, so 1 KiB leaves room for larger key material while
	// bounding what a hostile packet can make the decoder chew on.
	MaxEncrypt0Size = 1024
)

const (
	// coseEncrypt0Tag is the CBOR tag of a COSE_Encrypt0; as a tag below
	// 24 it is the single byte 0xd0, which is the only form we accept.
	coseEncrypt0Tag = 16
	// encapsulatedKeySize is the length of a DHKEM(P-256) enc: an
	// uncompressed SEC 1 point.
	encapsulatedKeySize = 65
	// encrypt0Context is the context string of the Enc_structure for
	// COSE_Encrypt0 (RFC 9052 §5.3).
	encrypt0Context = "Encrypt0"
)

// Errors of OpenEncrypt0 beyond the generic ErrTooLarge and ErrMalformed.
var (
	// ErrDecrypt: a COSE_Encrypt0 does not decrypt: wrong key, wrong
	// audience, a tampered header or ciphertext, or an algorithm other
	// than HPKE-0. Like ErrBadSignature it deliberately does not say
	// which, as that would help an attacker probe.
	ErrDecrypt = errors.New("protocol: cannot decrypt")
	// ErrWrongRecipient: the COSE_Encrypt0 names (by kid) another key than
	// the one offered. It wraps ErrDecrypt, so errors.Is matches both; it
	// exists so that a device holding several identity keys (active and
	// pending slots) can tell "try the other key" from "this was forged".
	ErrWrongRecipient = fmt.Errorf("%w: sealed to another key", ErrDecrypt)
)

// hpke0 returns the HPKE ciphersuite of AlgorithmHPKE0 but for the KEM,
// which comes with the key.
func hpke0() (hpke.KDF, hpke.AEAD) { return hpke.HKDFSHA256(), hpke.AES128GCM() }

// encrypt0 is the COSE_Encrypt0 array without its tag. Unprotected maps
// labels to byte strings: every header we accept (kid, ek) is one, so any
// other value type is refused by the decoder itself.
type encrypt0 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64][]byte
	Ciphertext  []byte
}

// hpke0Protected is the only protected header we emit or accept, {1: 35}
// in core deterministic encoding (TestEncrypt0DraftExample checks it
// against the draft's example).
func hpke0Protected() []byte { return []byte{0xa1, 0x01, 0x18, 0x23} }

// SealEncrypt0 encrypts plaintext (a data key) to a device's P-256
// identity key and returns a tagged COSE_Encrypt0 with HPKE-0.
//
// audience is the device id the message is for, bound as COSE external AAD
// exactly as for COSE_Sign1 ("" binds nothing). The kid in the unprotected
// header is KeyID(recipient), so a device that holds more than one identity
// key knows which to use. Every call draws a fresh ephemeral key, so
// sealing the same key twice yields unrelated bytes.
//
// The result only hides plaintext: HPKE base mode does not say who sealed
// it. Send it inside a signed message.
func SealEncrypt0(recipient *ecdsa.PublicKey, plaintext []byte, audience string) ([]byte, error) {
	if recipient == nil || recipient.Curve != elliptic.P256() {
		return nil, errors.New("protocol: seal encrypt0: recipient must be an ECDSA P-256 key")
	}
	pub, err := recipient.ECDH()
	if err != nil {
		return nil, fmt.Errorf("protocol: seal encrypt0: recipient key: %w", err)
	}
	pk, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("protocol: seal encrypt0: recipient key: %w", err)
	}
	kid, err := KeyID(recipient)
	if err != nil {
		return nil, err
	}
	protected := hpke0Protected()
	aad, err := encStructure(protected, audience)
	if err != nil {
		return nil, err
	}
	kdf, aead := hpke0()
	enc, sender, err := hpke.NewSender(pk, kdf, aead, nil)
	if err != nil {
		return nil, fmt.Errorf("protocol: seal encrypt0: %w", err)
	}
	ct, err := sender.Seal(aad, plaintext)
	if err != nil {
		return nil, fmt.Errorf("protocol: seal encrypt0: %w", err)
	}
	out, err := marshalEncrypt0(&encrypt0{
		Protected: protected,
		Unprotected: map[int64][]byte{
			cose.HeaderLabelKeyID:      kid,
			HeaderLabelEncapsulatedKey: enc,
		},
		Ciphertext: ct,
	})
	if err != nil {
		return nil, err
	}
	if len(out) > MaxEncrypt0Size {
		return nil, fmt.Errorf("%w: sealed encrypt0 of %d bytes", ErrTooLarge, len(out))
	}
	return out, nil
}

// OpenEncrypt0 decrypts a COSE_Encrypt0 made by SealEncrypt0 with the
// device's identity key, checking that it was sealed for audience.
//
// The input is hostile until it decrypts, so the decoding is strict: at
// most MaxEncrypt0Size bytes; tag 16 required; exactly three elements; a
// protected header of exactly {alg: HPKE-0}; an unprotected header of
// exactly kid and ek; no detached ciphertext; and only the core
// deterministic encoding, so that every accepted message has one byte form.
// Shape errors are ErrTooLarge or ErrMalformed; a kid other than the key's
// is ErrWrongRecipient; everything cryptographic is ErrDecrypt.
func OpenEncrypt0(recipient *ecdsa.PrivateKey, data []byte, audience string) ([]byte, error) {
	if recipient == nil || recipient.Curve != elliptic.P256() {
		return nil, errors.New("protocol: open encrypt0: recipient must be an ECDSA P-256 key")
	}
	msg, err := parseEncrypt0(data)
	if err != nil {
		return nil, err
	}
	want, err := KeyID(&recipient.PublicKey)
	if err != nil {
		return nil, err
	}
	if kid := msg.Unprotected[cose.HeaderLabelKeyID]; !bytes.Equal(kid, want) {
		return nil, fmt.Errorf("%w: kid %x, this key is %x", ErrWrongRecipient, kid, want)
	}
	priv, err := recipient.ECDH()
	if err != nil {
		return nil, fmt.Errorf("protocol: open encrypt0: recipient key: %w", err)
	}
	sk, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("protocol: open encrypt0: recipient key: %w", err)
	}
	return openHPKE0(sk, msg, audience)
}

// openHPKE0 runs the HPKE half of OpenEncrypt0 on a parsed message; the
// test of the draft's example uses it directly, since that example's kid
// is not one of ours.
func openHPKE0(sk hpke.PrivateKey, msg *encrypt0, audience string) ([]byte, error) {
	aad, err := encStructure(msg.Protected, audience)
	if err != nil {
		return nil, err
	}
	kdf, aead := hpke0()
	r, err := hpke.NewRecipient(msg.Unprotected[HeaderLabelEncapsulatedKey], sk, kdf, aead, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: encapsulated key: %v", ErrDecrypt, err)
	}
	pt, err := r.Open(aad, msg.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return pt, nil
}

// parseEncrypt0 checks the shape of a COSE_Encrypt0 and returns it with a
// protected header known to be {alg: HPKE-0} and an unprotected header
// holding exactly a well-sized kid and ek.
func parseEncrypt0(data []byte) (*encrypt0, error) {
	if len(data) > MaxEncrypt0Size {
		return nil, fmt.Errorf("%w: encrypt0 of %d bytes", ErrTooLarge, len(data))
	}
	// 0xd0 is tag 16 in its only minimal form; the strict decoder forbids
	// tags, so it must not see this one.
	if len(data) == 0 || data[0] != 0xc0|coseEncrypt0Tag {
		return nil, fmt.Errorf("%w: not a tagged COSE_Encrypt0", ErrMalformed)
	}
	var msg encrypt0
	if err := UnmarshalStrict(data[1:], &msg); err != nil {
		return nil, fmt.Errorf("%w: encrypt0: %v", ErrMalformed, err)
	}
	if msg.Protected == nil || msg.Unprotected == nil || msg.Ciphertext == nil {
		return nil, fmt.Errorf("%w: encrypt0: null header or detached ciphertext", ErrMalformed)
	}

	var prot map[int64]cbor.RawMessage
	if err := UnmarshalStrict(msg.Protected, &prot); err != nil {
		return nil, fmt.Errorf("%w: encrypt0 protected header: %v", ErrMalformed, err)
	}
	rawAlg, ok := prot[cose.HeaderLabelAlgorithm]
	if !ok || len(prot) != 1 {
		return nil, fmt.Errorf("%w: encrypt0 protected header must be exactly alg", ErrMalformed)
	}
	var alg int64
	if err := UnmarshalStrict(rawAlg, &alg); err != nil {
		return nil, fmt.Errorf("%w: encrypt0 alg: %v", ErrMalformed, err)
	}
	if alg != int64(AlgorithmHPKE0) {
		return nil, fmt.Errorf("%w: encrypt0 algorithm %d, want %d (HPKE-0)", ErrDecrypt, alg, AlgorithmHPKE0)
	}
	// The decoder tolerates non-minimal integers: pin the bytes too, so
	// that a header we would not write is refused as such, not as a
	// decryption failure.
	if !bytes.Equal(msg.Protected, hpke0Protected()) {
		return nil, fmt.Errorf("%w: encrypt0 protected header not in core deterministic encoding", ErrMalformed)
	}

	kid, okKID := msg.Unprotected[cose.HeaderLabelKeyID]
	ek, okEK := msg.Unprotected[HeaderLabelEncapsulatedKey]
	if !okKID || !okEK || len(msg.Unprotected) != 2 {
		return nil, fmt.Errorf("%w: encrypt0 unprotected header must be exactly kid and ek", ErrMalformed)
	}
	if len(kid) != KeyIDSize {
		return nil, fmt.Errorf("%w: encrypt0 kid of %d bytes, want %d", ErrMalformed, len(kid), KeyIDSize)
	}
	if len(ek) != encapsulatedKeySize {
		return nil, fmt.Errorf("%w: encrypt0 ek of %d bytes, want %d", ErrMalformed, len(ek), encapsulatedKeySize)
	}

	// One byte form per message: the decoder tolerates non-minimal
	// integers and lengths and any map order, so compare with our own
	// encoding.
	canon, err := marshalEncrypt0(&msg)
	if err != nil || !bytes.Equal(canon, data) {
		return nil, fmt.Errorf("%w: encrypt0 not in core deterministic encoding", ErrMalformed)
	}
	return &msg, nil
}

// marshalEncrypt0 encodes msg as a tagged COSE_Encrypt0, deterministically.
func marshalEncrypt0(msg *encrypt0) ([]byte, error) {
	out, err := MarshalCanonical(cbor.Tag{Number: coseEncrypt0Tag, Content: msg})
	if err != nil {
		return nil, fmt.Errorf("protocol: encode encrypt0: %w", err)
	}
	return out, nil
}

// encStructure returns the COSE Enc_structure (RFC 9052 §5.3) that HPKE
// authenticates as its aad: ["Encrypt0", protected, external_aad]. An
// absent external AAD is the empty byte string, never null.
func encStructure(protected []byte, audience string) ([]byte, error) {
	external := externalAAD(audience)
	if external == nil {
		external = []byte{}
	}
	b, err := MarshalCanonical([]any{encrypt0Context, protected, external})
	if err != nil {
		return nil, fmt.Errorf("protocol: encode Enc_structure: %w", err)
	}
	return b, nil
}
