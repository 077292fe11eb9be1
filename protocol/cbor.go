package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/fxamacker/cbor/v2"
)

// CBORLimits bound what a strict decoder accepts. They are the knobs that
// differ between keyfleet's decoders; everything else about strictness
// (no duplicate map keys, no indefinite lengths, no tags, no unknown
// fields, valid UTF-8 only, no integer conversion) is the same for all.
type CBORLimits struct {
	// MaxNestedLevels caps the depth of arrays and maps (4 to 65535).
	MaxNestedLevels int
	// MaxArrayElements caps every array (16 to 2^31-1).
	MaxArrayElements int
	// MaxMapPairs caps every map (16 to 2^31-1).
	MaxMapPairs int
}

// StrictLimits are DESIGN.md's limits for CBOR from untrusted input:
// nesting 8, arrays 64, maps 32. Every decoder of device-facing bytes uses
// them (protocol messages, COSE envelopes, anchor sets, firmware
// manifests).
var StrictLimits = CBORLimits{MaxNestedLevels: 8, MaxArrayElements: 64, MaxMapPairs: 32}

// CBOR is one pair of CBOR modes: core deterministic encoding (RFC 8949
// §4.2.1, with nil slices and maps encoded as empty ones) and strict
// decoding under a CBORLimits. Build it once with NewCBOR and share it; it
// is safe for concurrent use. The package-level MarshalCanonical,
// UnmarshalStrict and UnmarshalCanonical use one built with StrictLimits.
type CBOR struct {
	enc  cbor.EncMode
	dec  cbor.DecMode
	peek cbor.DecMode // dec, but unknown fields ignored: reads a header of a larger map
}

// NewCBOR builds the modes for limits. It fails only for limits outside
// the ranges CBORLimits documents.
func NewCBOR(limits CBORLimits) (*CBOR, error) {
	encOpts := cbor.CoreDetEncOptions()
	encOpts.NilContainers = cbor.NilContainerAsEmpty // an empty list is [], as the CDDL says
	enc, err := encOpts.EncMode()
	if err != nil {
		return nil, fmt.Errorf("protocol: cbor encoding mode: %w", err)
	}
	decOpts := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   limits.MaxNestedLevels,
		MaxArrayElements:  limits.MaxArrayElements,
		MaxMapPairs:       limits.MaxMapPairs,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
		IntDec:            cbor.IntDecConvertNone,
	}
	dec, err := decOpts.DecMode()
	if err != nil {
		return nil, fmt.Errorf("protocol: cbor decoding mode: %w", err)
	}
	decOpts.ExtraReturnErrors = cbor.ExtraDecErrorNone
	peek, err := decOpts.DecMode()
	if err != nil {
		return nil, fmt.Errorf("protocol: cbor decoding mode: %w", err)
	}
	return &CBOR{enc: enc, dec: dec, peek: peek}, nil
}

// Marshal encodes v deterministically: the same value always gives the
// same bytes, which signatures and hashes over encodings rely on.
func (c *CBOR) Marshal(v any) ([]byte, error) { return c.enc.Marshal(v) }

// Unmarshal decodes data into v strictly. Errors are fxamacker/cbor's;
// callers wrap them in their own sentinel (ErrMalformed and the like).
func (c *CBOR) Unmarshal(data []byte, v any) error { return c.dec.Unmarshal(data, v) }

// UnmarshalCanonical decodes data strictly and accepts it only if it is
// the deterministic encoding of what it decoded to, so that every accepted
// value has exactly one byte form (the decoder alone tolerates keys out of
// order and non-minimal integers and lengths).
func (c *CBOR) UnmarshalCanonical(data []byte, v any) error {
	if err := c.dec.Unmarshal(data, v); err != nil {
		return err
	}
	return c.RequireCanonical(data, v)
}

// RequireCanonical accepts data only if it is the deterministic encoding
// of v, the value it was decoded to. Decoders that check some fields first
// (to name the fault) call it after them.
func (c *CBOR) RequireCanonical(data []byte, v any) error {
	again, err := c.enc.Marshal(v)
	if err != nil {
		return err
	}
	if !bytes.Equal(again, data) {
		return errNotCanonical
	}
	return nil
}

var errNotCanonical = errors.New("not in core deterministic encoding")

// strictCBOR is the CBOR of StrictLimits, built on first use. The limits
// are constants within NewCBOR's ranges, so the error is never set in
// practice; it is returned rather than panicked on all the same.
var strictCBOR = sync.OnceValues(func() (*CBOR, error) { return NewCBOR(StrictLimits) })

// MarshalCanonical encodes v deterministically (see CBOR.Marshal).
func MarshalCanonical(v any) ([]byte, error) {
	c, err := strictCBOR()
	if err != nil {
		return nil, err
	}
	return c.Marshal(v)
}

// UnmarshalStrict decodes untrusted data into v under StrictLimits (see
// CBOR.Unmarshal).
func UnmarshalStrict(data []byte, v any) error {
	c, err := strictCBOR()
	if err != nil {
		return err
	}
	return c.Unmarshal(data, v)
}

// UnmarshalCanonical decodes untrusted data into v under StrictLimits and
// requires the deterministic encoding (see CBOR.UnmarshalCanonical).
func UnmarshalCanonical(data []byte, v any) error {
	c, err := strictCBOR()
	if err != nil {
		return err
	}
	return c.UnmarshalCanonical(data, v)
}

// RequireCanonical accepts data only if it is the deterministic encoding
// of v (see CBOR.RequireCanonical).
func RequireCanonical(data []byte, v any) error {
	c, err := strictCBOR()
	if err != nil {
		return err
	}
	return c.RequireCanonical(data, v)
}

// peekStrict decodes the fields of v found in data, ignoring others, under
// StrictLimits: the message header before the type is known.
func peekStrict(data []byte, v any) error {
	c, err := strictCBOR()
	if err != nil {
		return err
	}
	return c.peek.Unmarshal(data, v)
}
