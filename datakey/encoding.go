package datakey

import (
	"fmt"
	"sync"

	"github.com/keyfleet/keyfleet/protocol"
)

// Stored keyset format, in CDDL:
//
//	keyset = {
//	  1: 1,                 ; format version
//	  2: [* key-version],   ; ascending by version
//	}
//	key-version = [
//	  version: uint .size 4,  ; > 0
//	  status: 1..4,           ; Primary, DecryptOnly, Retired, Destroyed
//	  key: bstr,              ; 16 or 32 bytes; empty when Retired or Destroyed
//	]
//
// encoded with CBOR core deterministic encoding. A reader accepts exactly
// that encoding and exactly the keysets the methods of Keyset can build,
// so a corrupted or hand-edited file is refused, not half-loaded.
const (
	// storeFormat is the current format version. A new format gets a new
	// number; UnmarshalBinary refuses numbers it does not know.
	storeFormat = 1
	// maxStoredVersions bounds the versions a stored keyset may hold,
	// tombstones included: a daily rotation for over a hundred years.
	maxStoredVersions = 1 << 16
)

type storedKeyset struct {
	Format   uint8           `cbor:"1,keyasint"`
	Versions []storedVersion `cbor:"2,keyasint"`
}

type storedVersion struct {
	_       struct{} `cbor:",toarray"`
	Version uint32
	Status  Status
	Key     []byte
}

// storeLimits are the strict decoding limits of a stored keyset: the
// nesting of the format and up to maxStoredVersions versions. Everything
// else about strictness is protocol's, shared by every keyfleet decoder.
var storeLimits = protocol.CBORLimits{MaxNestedLevels: 4, MaxArrayElements: maxStoredVersions, MaxMapPairs: 16}

// storeCBOR is the CBOR of storeLimits, built once, on first use. The
// limits are constants in range, so it never fails in practice; if it
// did, encoding and decoding would return the error.
var storeCBOR = sync.OnceValues(func() (*protocol.CBOR, error) { return protocol.NewCBOR(storeLimits) })

// MarshalBinary encodes the keyset, key material included and in the
// clear, for the device's disk. The encoding is deterministic: the same
// keyset always gives the same bytes.
func (ks *Keyset) MarshalBinary() ([]byte, error) {
	s := storedKeyset{Format: storeFormat, Versions: make([]storedVersion, len(ks.versions))}
	for i, e := range ks.versions {
		s.Versions[i] = storedVersion{Version: e.version, Status: e.status, Key: e.key.bytes()}
	}
	c, err := storeCBOR()
	if err != nil {
		return nil, fmt.Errorf("datakey: encode keyset: %w", err)
	}
	b, err := c.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("datakey: encode keyset: %w", err)
	}
	return b, nil
}

// UnmarshalBinary replaces the keyset with one stored by MarshalBinary.
// It refuses (ErrCorrupt) anything MarshalBinary would not
// have written: another format, a non-canonical encoding, unordered or
// duplicate versions, version 0, an invalid status, not exactly one
// primary, a key of the wrong size, or key bytes on a retired version.
// On error the keyset is unchanged. It copies the key material out of
// data.
func (ks *Keyset) UnmarshalBinary(data []byte) error {
	c, err := storeCBOR()
	if err != nil {
		return fmt.Errorf("datakey: decode keyset: %w", err)
	}
	var s storedKeyset
	if err := c.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if s.Format != storeFormat {
		return fmt.Errorf("%w: format %d, want %d", ErrCorrupt, s.Format, storeFormat)
	}
	if s.Versions == nil {
		return fmt.Errorf("%w: no version list", ErrCorrupt)
	}
	if err := c.RequireCanonical(data, s); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	var (
		next      = make([]entry, 0, len(s.Versions))
		primaries int
		last      uint32
	)
	for _, sv := range s.Versions {
		switch {
		case sv.Version == 0:
			return fmt.Errorf("%w: version 0", ErrCorrupt)
		case sv.Version <= last:
			return fmt.Errorf("%w: version %d after %d", ErrCorrupt, sv.Version, last)
		case !sv.Status.valid():
			return fmt.Errorf("%w: version %d has status %v", ErrCorrupt, sv.Version, sv.Status)
		case sv.Status.hasKey():
			if len(sv.Key) != 16 && len(sv.Key) != 32 {
				return fmt.Errorf("%w: version %d has a %d-byte key", ErrCorrupt, sv.Version, len(sv.Key))
			}
		case len(sv.Key) != 0:
			return fmt.Errorf("%w: %v version %d still has key bytes", ErrCorrupt, sv.Status, sv.Version)
		}
		if sv.Status == Primary {
			primaries++
		}
		last = sv.Version
		next = append(next, entry{version: sv.Version, status: sv.Status, key: newSecret(sv.Key)})
	}
	if len(next) > 0 && primaries != 1 {
		return fmt.Errorf("%w: %d primary versions, want 1", ErrCorrupt, primaries)
	}
	for i := range ks.versions {
		ks.versions[i].key.wipe()
	}
	ks.versions = next
	return nil
}
