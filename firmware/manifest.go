package firmware

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/keyfleet/keyfleet/protocol"
)

// Limits and wire constants of the manifest format.
const (
	// FormatVersion is the manifest format this package speaks, carried in
	// every manifest like SUIT's suit-manifest-version. A new format (say,
	// another digest algorithm) gets a new number, so an old device refuses
	// it as malformed instead of misreading it.
	FormatVersion = 1

	// MaxManifestSize caps a signed manifest. The largest valid one, with a
	// MaxURILen URI, is about 450 bytes; 1 KiB leaves room for growth while
	// bounding what a hostile sender can make a device parse before the
	// signature is checked.
	MaxManifestSize = 1024

	// MaxURILen bounds Manifest.URI, in bytes. It only tells the agent where
	// to fetch the image, so it need not hold more than a short HTTPS URL.
	MaxURILen = 256

	// UUIDSize is the length of vendor and class identifiers (RFC 9124 uses
	// RFC 4122 UUIDs for both).
	UUIDSize = 16

	// DigestSize is the length of Manifest.Digest: format 1 fixes the
	// digest algorithm to SHA-256.
	DigestSize = sha256.Size
)

// UUID is an RFC 4122 UUID in binary form. Manifests carry vendor and class
// identifiers as UUIDs, as RFC 9124 does, so that two vendors (or two
// hardware revisions) can never collide by choosing the same short name.
// The zero UUID is invalid.
type UUID [UUIDSize]byte

// String formats u in the canonical 8-4-4-4-12 hex form.
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// ParseUUID parses the canonical 8-4-4-4-12 hex form (either case), which
// is how vendor and class identifiers appear in configuration files.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("firmware: uuid %q: want 8-4-4-4-12 hex digits", s)
	}
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != UUIDSize {
		return u, fmt.Errorf("firmware: uuid %q: want 8-4-4-4-12 hex digits", s)
	}
	copy(u[:], raw)
	return u, nil
}

// MarshalText formats u as String does, so UUIDs read well in the slot
// state file and in configuration.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText parses the form MarshalText writes.
func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// Manifest describes one firmware image: which devices it is for, which
// version it is, and how to recognise the exact bytes. It mirrors the SUIT
// manifest (RFC 9019, RFC 9124) in compact form: one flat CBOR map with
// small integer keys instead of SUIT's command sequences, because a keyfleet
// device installs exactly one image into an A/B slot and needs no
// interpreter.
//
// The zero value is invalid: Version, Size, VendorID, ClassID and Digest
// are all required.
type Manifest struct {
	// VendorID mirrors suit-parameter-vendor-identifier: together with
	// ClassID it makes sure a device only installs firmware built for it.
	VendorID UUID
	// ClassID mirrors suit-parameter-class-identifier: the device model
	// (and hardware revision) within the vendor.
	ClassID UUID
	// Version mirrors suit-manifest-sequence-number: a monotonic firmware
	// version, greater than zero. A device refuses any version not greater
	// than the one it runs, which is its anti-rollback and anti-replay
	// rule.
	Version uint32
	// Digest mirrors suit-parameter-image-digest, fixed to SHA-256 of the
	// whole image (SUIT carries the algorithm; format 1 implies it).
	Digest [DigestSize]byte
	// Size mirrors suit-parameter-image-size, in bytes. It is checked
	// before the digest so a truncated or padded download fails fast.
	Size uint64
	// URI mirrors suit-parameter-uri: where to fetch the image. It is
	// optional (the image may arrive by other means) and, being signed, it
	// is only a hint: the digest decides what is installed.
	URI string
}

// wireManifest is the CBOR form of a Manifest. It keeps the identifiers as
// byte strings so that a wrong length is an error, not a silent truncation
// or zero-padding into a fixed-size array.
type wireManifest struct {
	Format   uint8  `cbor:"1,keyasint"` // suit-manifest-version
	Version  uint32 `cbor:"2,keyasint"` // suit-manifest-sequence-number
	VendorID []byte `cbor:"3,keyasint"` // suit-parameter-vendor-identifier
	ClassID  []byte `cbor:"4,keyasint"` // suit-parameter-class-identifier
	Digest   []byte `cbor:"5,keyasint"` // suit-parameter-image-digest (SHA-256)
	Size     uint64 `cbor:"6,keyasint"` // suit-parameter-image-size
	URI      string `cbor:"7,keyasint,omitempty"`
}

// externalAAD separates firmware signatures from every other COSE_Sign1 in
// keyfleet: even if one key signed both, a protocol message could never
// verify as a manifest.
var externalAAD = []byte("keyfleet/firmware/v1")

// validate checks what the CBOR schema cannot: required fields and bounds.
func (m *Manifest) validate() error {
	switch {
	case m.Version == 0:
		return fmt.Errorf("%w: version 0", ErrMalformed)
	case m.VendorID == UUID{}:
		return fmt.Errorf("%w: zero vendor id", ErrMalformed)
	case m.ClassID == UUID{}:
		return fmt.Errorf("%w: zero class id", ErrMalformed)
	case m.Digest == [DigestSize]byte{}:
		return fmt.Errorf("%w: zero digest", ErrMalformed)
	case m.Size == 0:
		return fmt.Errorf("%w: image size 0", ErrMalformed)
	case len(m.URI) > MaxURILen:
		return fmt.Errorf("%w: uri longer than %d bytes", ErrMalformed, MaxURILen)
	}
	return nil
}

func (m *Manifest) wire() *wireManifest {
	return &wireManifest{
		Format:   FormatVersion,
		Version:  m.Version,
		VendorID: m.VendorID[:],
		ClassID:  m.ClassID[:],
		Digest:   m.Digest[:],
		Size:     m.Size,
		URI:      m.URI,
	}
}

// decodeManifest parses a manifest payload strictly. It also requires the
// canonical encoding (what Sign produces), so one manifest has exactly one
// byte form, and a device can compare or log manifests by their bytes.
func decodeManifest(payload []byte) (*Manifest, error) {
	var w wireManifest
	if err := protocol.UnmarshalStrict(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if w.Format != FormatVersion {
		return nil, fmt.Errorf("%w: format %d, want %d", ErrMalformed, w.Format, FormatVersion)
	}
	if len(w.VendorID) != UUIDSize || len(w.ClassID) != UUIDSize {
		return nil, fmt.Errorf("%w: vendor or class id not %d bytes", ErrMalformed, UUIDSize)
	}
	if len(w.Digest) != DigestSize {
		return nil, fmt.Errorf("%w: digest not %d bytes", ErrMalformed, DigestSize)
	}
	m := &Manifest{Version: w.Version, Size: w.Size, URI: w.URI}
	copy(m.VendorID[:], w.VendorID)
	copy(m.ClassID[:], w.ClassID)
	copy(m.Digest[:], w.Digest)
	if err := m.validate(); err != nil {
		return nil, err
	}
	if err := protocol.RequireCanonical(payload, m.wire()); err != nil {
		return nil, fmt.Errorf("%w: payload not in canonical encoding", ErrMalformed)
	}
	return m, nil
}

// p256 returns pub as a P-256 ECDSA key and its kid. ES256 over P-256 is
// the one suite keyfleet devices implement, so anything else is a
// configuration error, reported as such rather than as a bad manifest.
func p256(pub crypto.PublicKey) (*ecdsa.PublicKey, []byte, error) {
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || ek == nil || ek.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("firmware: key must be ECDSA P-256, got %T", pub)
	}
	kid, err := protocol.KeyID(ek)
	if err != nil {
		return nil, nil, err
	}
	return ek, kid, nil
}

// Sign encodes m deterministically and signs it into a tagged COSE_Sign1
// with ES256. The protected header carries the algorithm and the kid
// (protocol.KeyID of the signer's public key), so the kid is covered by the
// signature and a device refuses a manifest from a rotated-out key by name,
// without trying to verify it. key must be an ECDSA P-256 signer; an HSM
// handle implementing crypto.Signer works.
//
// Sign refuses a manifest that Verify would refuse.
func Sign(m *Manifest, key crypto.Signer) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("firmware: sign v%d: %w", m.Version, err)
	}
	payload, err := protocol.MarshalCanonical(m.wire())
	if err != nil {
		return nil, fmt.Errorf("firmware: sign v%d: %w", m.Version, err)
	}
	out, err := signPayload(payload, key)
	if err != nil {
		return nil, fmt.Errorf("firmware: sign v%d: %w", m.Version, err)
	}
	return out, nil
}

// signPayload wraps payload in a tagged COSE_Sign1 signed by key. It does
// not look at the payload, which lets tests sign malformed ones.
func signPayload(payload []byte, key crypto.Signer) ([]byte, error) {
	if _, _, err := p256(key.Public()); err != nil {
		return nil, err
	}
	out, err := protocol.SignSign1(key, payload, externalAAD)
	if err != nil {
		return nil, err
	}
	if len(out) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(out))
	}
	return out, nil
}

// openSign1 parses a signed manifest's envelope under the size cap and the
// strict limits of protocol.ParseSign1, which accepts exactly {alg: ES256,
// kid} protected, nothing unprotected and an attached payload. It checks
// the shape only.
func openSign1(signed []byte) (*protocol.Sign1, error) {
	if len(signed) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(signed))
	}
	msg, err := protocol.ParseSign1(signed)
	if err != nil {
		return nil, coseError(err)
	}
	return msg, nil
}

// coseError restates a refusal of protocol's COSE_Sign1 code with this
// package's sentinels: the algorithm, key or signature is
// ErrBadSignature, anything else ErrMalformed.
func coseError(err error) error {
	var ce *protocol.COSEError
	if !errors.As(err, &ce) {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if errors.Is(ce.Err, protocol.ErrBadSignature) {
		return fmt.Errorf("%w: %s", ErrBadSignature, ce.Detail)
	}
	return fmt.Errorf("%w: %s", ErrMalformed, ce.Detail)
}

// Verify parses a signed manifest strictly, checks that it names the
// trusted firmware-signing key and is signed by it, and returns the
// manifest. The checks run cheapest first and the payload is parsed only
// after the signature verifies, so unauthenticated bytes reach nothing but
// the envelope parser.
//
// Verify does not compare the manifest with a device: Slots.Install adds
// the vendor, class and version checks. trusted must be an ECDSA P-256
// public key; after a firmware-key rotation, pass the new key, and
// manifests signed by the old one fail with ErrUntrustedKey.
func Verify(signed []byte, trusted crypto.PublicKey) (*Manifest, error) {
	pub, kid, err := p256(trusted)
	if err != nil {
		return nil, err
	}
	msg, err := openSign1(signed)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(msg.KID, kid) {
		return nil, fmt.Errorf("%w: kid %x, trusted key is %x", ErrUntrustedKey, msg.KID, kid)
	}
	if err := msg.Verify(pub, externalAAD); err != nil {
		return nil, coseError(err)
	}
	return decodeManifest(msg.Payload)
}

// decodeSigned returns the manifest inside a signed manifest without
// verifying the signature. Slots uses it for manifests it verified at
// install time and kept in its own state file.
func decodeSigned(signed []byte) (*Manifest, error) {
	msg, err := openSign1(signed)
	if err != nil {
		return nil, err
	}
	return decodeManifest(msg.Payload)
}

// CheckImage checks that img is the image m describes: the size first, so a
// truncated download fails without hashing, then the SHA-256 digest,
// compared in constant time.
func (m *Manifest) CheckImage(img []byte) error {
	if uint64(len(img)) != m.Size {
		return fmt.Errorf("%w: %d bytes, manifest v%d says %d", ErrSize, len(img), m.Version, m.Size)
	}
	sum := sha256.Sum256(img)
	if subtle.ConstantTimeCompare(sum[:], m.Digest[:]) != 1 {
		return fmt.Errorf("%w: manifest v%d", ErrDigest, m.Version)
	}
	return nil
}
