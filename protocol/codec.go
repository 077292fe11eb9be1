package protocol

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
)

// Codec encodes and decodes messages. It holds no state of its own (the
// CBOR modes are built once for the package, see MarshalCanonical), so its
// zero value works and it is safe for concurrent use; NewCodec exists so
// that callers keep one value to pass around.
type Codec struct{}

// NewCodec returns a codec with core deterministic encoding and the strict
// decoding limits of DESIGN.md (StrictLimits).
func NewCodec() *Codec { return &Codec{} }

// Marshal encodes m deterministically, filling in the protocol version and
// the message type. It refuses a message that would not pass Decode. A
// Cert's certificate goes out compact (CompactLeaf); m is not changed.
func (c *Codec) Marshal(m Message) ([]byte, error) {
	h := m.Hdr()
	h.V = Version
	h.Type = TypeOf(m)
	if c, ok := m.(*Cert); ok && len(c.Cert) > 0 {
		compact, err := CompactLeaf(c.Cert)
		if err != nil {
			return nil, fmt.Errorf("protocol: encode %v: %w", h.Type, err)
		}
		cc := *c
		cc.Cert = compact
		m = &cc
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("protocol: encode %v: %w", h.Type, err)
	}
	b, err := MarshalCanonical(m)
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
	if err := peekStrict(payload, &hdr); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if hdr.V != Version {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedVersion, hdr.V)
	}
	m, err := newMessage(hdr.Type)
	if err != nil {
		return nil, err
	}
	if err := UnmarshalStrict(payload, m); err != nil {
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
// P-256 key (SignSign1). The kid in the protected header names the key, so
// the receiver can pick the right verification key without trying several.
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
	out, err := SignSign1(key, payload, externalAAD(audience))
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
	sign1   *Sign1
}

// IsSigned reports whether the packet came inside COSE_Sign1.
func (e *Envelope) IsSigned() bool { return e.sign1 != nil }

// Open parses a packet into an envelope: a tagged COSE_Sign1 or a bare
// message. It checks the size and the envelope's shape only; call Verify
// and then Message.
func (c *Codec) Open(data []byte) (*Envelope, error) {
	if len(data) > MaxPacketSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	if !IsSign1(data) {
		return &Envelope{Payload: data}, nil
	}
	s, err := ParseSign1(data)
	if err != nil {
		return nil, err
	}
	return &Envelope{KID: s.KID, Payload: s.Payload, sign1: s}, nil
}

// Verify checks the envelope's signature with pub (an *ecdsa.PublicKey on
// P-256), that its kid names pub and that it was sealed for audience.
func (e *Envelope) Verify(pub crypto.PublicKey, audience string) error {
	if e.sign1 == nil {
		return ErrUnsigned
	}
	return e.sign1.Verify(pub, externalAAD(audience))
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
