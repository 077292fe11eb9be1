package protocol

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// Codec encodes and decodes messages. Its zero value is not usable; build
// one with NewCodec. A Codec is safe for concurrent use.
type Codec struct {
	enc     cbor.EncMode
	dec     cbor.DecMode
	peek    cbor.DecMode
	coseDec cbor.DecMode
}

// NewCodec returns a codec with core deterministic encoding and the strict
// decoding limits of DESIGN.md.
func NewCodec() *Codec {
	encOpts := cbor.CoreDetEncOptions()
	encOpts.NilContainers = cbor.NilContainerAsEmpty // an empty slot list is [], as the CDDL says
	enc, err := encOpts.EncMode()
	if err != nil {
		panic(fmt.Sprintf("protocol: cbor enc mode: %v", err)) // static options: cannot fail
	}
	strict := StrictDecOptions()
	dec, err := strict.DecMode()
	if err != nil {
		panic(fmt.Sprintf("protocol: cbor dec mode: %v", err))
	}
	peekOpts := strict
	peekOpts.ExtraReturnErrors = cbor.ExtraDecErrorNone
	peek, err := peekOpts.DecMode()
	if err != nil {
		panic(fmt.Sprintf("protocol: cbor peek mode: %v", err))
	}
	// The COSE structure itself carries tag 18; everything else keeps the
	// strict limits.
	coseOpts := strict
	coseOpts.TagsMd = cbor.TagsAllowed
	coseOpts.ExtraReturnErrors = cbor.ExtraDecErrorNone
	coseDec, err := coseOpts.DecMode()
	if err != nil {
		panic(fmt.Sprintf("protocol: cbor cose mode: %v", err))
	}
	return &Codec{enc: enc, dec: dec, peek: peek, coseDec: coseDec}
}

// StrictDecOptions are the limits of DESIGN.md for CBOR from untrusted
// input: no duplicate map keys, no indefinite lengths, no tags, at most 8
// levels, 64 array elements and 32 map pairs, no unknown fields, valid
// UTF-8 only. Every keyfleet decoder of device-facing bytes starts from
// them (protocol, anchors, firmware), so that the limits are set in one
// place.
func StrictDecOptions() cbor.DecOptions {
	return cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   8,
		MaxArrayElements:  64,
		MaxMapPairs:       32,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
		IntDec:            cbor.IntDecConvertNone,
	}
}

// Marshal encodes m deterministically, filling in the protocol version and
// the message type. It refuses a message that would not pass Decode.
func (c *Codec) Marshal(m Message) ([]byte, error) {
	h := m.Hdr()
	h.V = Version
	h.Type = TypeOf(m)
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("protocol: encode %v: %w", h.Type, err)
	}
	b, err := c.enc.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode %v: %w", h.Type, err)
	}
	return b, nil
}

// Decode parses a message payload (not a COSE envelope) strictly.
func (c *Codec) Decode(payload []byte) (Message, error) {
	if len(payload) > MaxPacketSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(payload))
	}
	var hdr struct {
		V    uint8 `cbor:"1,keyasint"`
		Type Type  `cbor:"2,keyasint"`
	}
	if err := c.peek.Unmarshal(payload, &hdr); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if hdr.V != Version {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedVersion, hdr.V)
	}
	m, err := newMessage(hdr.Type)
	if err != nil {
		return nil, err
	}
	if err := c.dec.Unmarshal(payload, m); err != nil {
		return nil, fmt.Errorf("%w: %v: %v", ErrMalformed, hdr.Type, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%v: %w", hdr.Type, err)
	}
	return m, nil
}

// KeyID names a public key on the wire: the first KeyIDSize bytes of
// SHA-256 over its PKIX SubjectPublicKeyInfo.
func KeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("protocol: key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:KeyIDSize], nil
}

// Seal encodes m and signs it into a tagged COSE_Sign1 with ES256 and a
// P-256 key. The kid in the unprotected header names the key, so the
// receiver can pick the right verification key without trying several.
//
// audience binds the signature to the device the message is for (downlinks)
// or from (uplinks), as COSE external AAD: a message replayed onto another
// device's topic does not verify there. Broadcast messages use "".
func (c *Codec) Seal(m Message, key crypto.Signer, audience string) ([]byte, error) {
	payload, err := c.Marshal(m)
	if err != nil {
		return nil, err
	}
	if !Signed(TypeOf(m)) {
		return nil, fmt.Errorf("protocol: seal %v: %w", TypeOf(m), ErrUnsigned)
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("protocol: seal %v: key must be ECDSA P-256", TypeOf(m))
	}
	kid, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	signer, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		return nil, fmt.Errorf("protocol: seal %v: %w", TypeOf(m), err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{
			Protected:   cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256},
			Unprotected: cose.UnprotectedHeader{cose.HeaderLabelKeyID: kid},
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, externalAAD(audience), signer); err != nil {
		return nil, fmt.Errorf("protocol: sign %v: %w", TypeOf(m), err)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("protocol: seal %v: %w", TypeOf(m), err)
	}
	if len(out) > MaxPacketSize {
		return nil, fmt.Errorf("protocol: seal %v: %w: %d bytes", TypeOf(m), ErrTooLarge, len(out))
	}
	return out, nil
}

// externalAAD is the COSE external additional data binding a signature to
// a device: nil for broadcasts.
func externalAAD(audience string) []byte {
	if audience == "" {
		return nil
	}
	return []byte("keyfleet/d/" + audience)
}

// Bare encodes a message that travels without a signature (Cert).
func (c *Codec) Bare(m Message) ([]byte, error) {
	if Signed(TypeOf(m)) {
		return nil, fmt.Errorf("protocol: bare %v: %w", TypeOf(m), ErrUnsigned)
	}
	return c.Marshal(m)
}

// Envelope is a received packet, parsed but not yet trusted.
type Envelope struct {
	// KID is the key id from a COSE_Sign1 envelope; nil for a bare message.
	KID []byte
	// Payload is the message CBOR inside the envelope.
	Payload []byte
	sign1   *cose.Sign1Message
}

// IsSigned reports whether the packet came inside COSE_Sign1.
func (e *Envelope) IsSigned() bool { return e.sign1 != nil }

// coseSign1Tag starts a tagged COSE_Sign1: tag 18, then a 4-element array.
var coseSign1Tag = []byte{0xd2, 0x84}

// Open parses a packet into an envelope: a tagged COSE_Sign1 or a bare
// message. It checks the size and the envelope's shape only; call Verify
// and then Message.
func (c *Codec) Open(data []byte) (*Envelope, error) {
	if len(data) > MaxPacketSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	if !bytes.HasPrefix(data, coseSign1Tag) {
		return &Envelope{Payload: data}, nil
	}
	// Check well-formedness under our limits before go-cose parses it.
	var raw any
	if err := c.coseDec.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: cose: %v", ErrMalformed, err)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(data); err != nil {
		return nil, fmt.Errorf("%w: cose: %v", ErrMalformed, err)
	}
	alg, err := msg.Headers.Protected.Algorithm()
	if err != nil || alg != cose.AlgorithmES256 {
		return nil, fmt.Errorf("%w: cose algorithm %v", ErrBadSignature, alg)
	}
	if len(msg.Headers.Protected) != 1 || len(msg.Headers.Unprotected) != 1 {
		return nil, fmt.Errorf("%w: cose headers must be exactly alg (protected) and kid (unprotected)", ErrMalformed)
	}
	kid, ok := msg.Headers.Unprotected[cose.HeaderLabelKeyID].([]byte)
	if !ok || len(kid) != KeyIDSize {
		return nil, fmt.Errorf("%w: cose kid", ErrMalformed)
	}
	if msg.Payload == nil {
		return nil, fmt.Errorf("%w: detached payload", ErrMalformed)
	}
	return &Envelope{KID: kid, Payload: msg.Payload, sign1: &msg}, nil
}

// Verify checks the envelope's signature with pub (an *ecdsa.PublicKey on
// P-256), that its kid names pub and that it was sealed for audience.
func (e *Envelope) Verify(pub crypto.PublicKey, audience string) error {
	if e.sign1 == nil {
		return ErrUnsigned
	}
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return fmt.Errorf("%w: key type %T", ErrBadSignature, pub)
	}
	kid, err := KeyID(ek)
	if err != nil {
		return err
	}
	if !bytes.Equal(kid, e.KID) {
		return fmt.Errorf("%w: kid %x is not key %x", ErrBadSignature, e.KID, kid)
	}
	v, err := cose.NewVerifier(cose.AlgorithmES256, ek)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if err := e.sign1.Verify(externalAAD(audience), v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return nil
}

// Message decodes the payload and checks that the message type is signed
// exactly when the protocol requires it. Call it after Verify for signed
// types; it does not verify.
func (c *Codec) Message(e *Envelope) (Message, error) {
	m, err := c.Decode(e.Payload)
	if err != nil {
		return nil, err
	}
	if Signed(TypeOf(m)) != e.IsSigned() {
		return nil, fmt.Errorf("%v: %w", TypeOf(m), ErrUnsigned)
	}
	return m, nil
}

// IsRejection reports whether err is one of this package's input errors
// (as opposed to an internal failure).
func IsRejection(err error) bool {
	for _, e := range []error{ErrTooLarge, ErrMalformed, ErrUnsupportedVersion, ErrUnknownType,
		ErrMissingField, ErrBadSignature, ErrUnsigned, ErrExpired, ErrBadDeviceID, ErrDecrypt} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
