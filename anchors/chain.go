package anchors

import (
	"fmt"

	"github.com/keyfleet/keyfleet/protocol"
)

// EncodeChain encodes signed sets, oldest first, as one chain message: a
// CBOR array of byte strings, each a set as Sign returned it. It checks
// sizes only; whether each set is signed by the one before is Walk's
// question, asked on the device.
func EncodeChain(sets [][]byte) ([]byte, error) {
	if err := checkChain(sets); err != nil {
		return nil, fmt.Errorf("anchors: encode chain: %w", err)
	}
	b, err := protocol.MarshalCanonical(sets)
	if err != nil {
		return nil, fmt.Errorf("anchors: encode chain: %w", err)
	}
	if len(b) > MaxChainBytes {
		return nil, fmt.Errorf("anchors: encode chain: %w: %d bytes, max %d", ErrTooLarge, len(b), MaxChainBytes)
	}
	return b, nil
}

// DecodeChain decodes a chain message strictly (size cap first, canonical
// CBOR, 1 to MaxChainLen non-empty entries of at most MaxSetSize bytes)
// and returns its entries for Walk. It parses no set and checks no
// signature. Every error wraps ErrTooLarge or ErrMalformed.
func DecodeChain(b []byte) ([][]byte, error) {
	if len(b) > MaxChainBytes {
		return nil, fmt.Errorf("anchors: decode chain: %w: %d bytes, max %d", ErrTooLarge, len(b), MaxChainBytes)
	}
	var sets [][]byte
	if err := protocol.UnmarshalStrict(b, &sets); err != nil {
		return nil, fmt.Errorf("anchors: decode chain: %w: %v", ErrMalformed, err)
	}
	if err := checkChain(sets); err != nil {
		return nil, fmt.Errorf("anchors: decode chain: %w", err)
	}
	if err := protocol.RequireCanonical(b, sets); err != nil {
		return nil, fmt.Errorf("anchors: decode chain: %w: %v", ErrMalformed, err)
	}
	return sets, nil
}

func checkChain(sets [][]byte) error {
	if len(sets) == 0 || len(sets) > MaxChainLen {
		return fmt.Errorf("%w: %d entries, want 1 to %d", ErrMalformed, len(sets), MaxChainLen)
	}
	for i, s := range sets {
		if len(s) == 0 {
			return fmt.Errorf("%w: entry %d is empty", ErrMalformed, i)
		}
		if len(s) > MaxSetSize {
			return fmt.Errorf("%w: entry %d is %d bytes, max %d", ErrTooLarge, i, len(s), MaxSetSize)
		}
	}
	return nil
}
