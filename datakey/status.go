package datakey

import "fmt"

// Status is where a key version is in its life cycle. It is a typed enum
// rather than a bool or a string so that the compiler and the decoder
// catch nonsense, and its zero value, Unknown, is invalid, so that a status
// nobody set is never mistaken for a real one.
//
// The life cycle:
//
//	        Add                SetPrimary / Rotate
//	(new) ------> DecryptOnly --------------------> Primary
//	                |    ^                             |
//	                |    +-----------------------------+
//	                |     another version becomes Primary
//	                | Retire (policy: RetireBeyond)
//	                v
//	             Retired --Destroy (escrow, after a delay)--> Destroyed
//
// A new version becomes Primary (Rotate, or Add then SetPrimary; the first
// version of an empty keyset is Primary at once) and the previous Primary
// becomes DecryptOnly: data it wrote still reads, but nothing new is
// written with it. Once more DecryptOnly versions exist than the policy
// keeps, the oldest become Retired: the device deletes them, and only the
// server's escrow can still decrypt their data. After a delay that gives
// operators time to recover such data, the escrow copy is wiped and the
// version is Destroyed. Destroyed is terminal, and the Primary can only
// leave that state by another version's promotion, so the keyset can
// always encrypt.
type Status uint8

// The statuses, in life-cycle order. The numbers are stored on disk by
// MarshalBinary: never renumber them.
const (
	// Unknown is the invalid zero value.
	Unknown Status = iota
	// Primary: used for encryption and decryption. Exactly one per keyset.
	Primary
	// DecryptOnly: enabled for decryption only. Older data, or data from
	// peers that have not rotated yet, still reads.
	DecryptOnly
	// Retired: the device must delete the key; its data is refused
	// (ErrRetired). The server's escrow still holds a copy.
	Retired
	// Destroyed: the escrow copy is wiped too; the data is lost for good.
	Destroyed
)

// String returns the status as operators see it in reports and logs.
func (s Status) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Primary:
		return "primary"
	case DecryptOnly:
		return "decrypt-only"
	case Retired:
		return "retired"
	case Destroyed:
		return "destroyed"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// valid reports whether s is one of the named statuses other than Unknown.
func (s Status) valid() bool { return s >= Primary && s <= Destroyed }

// hasKey reports whether a version in status s holds key material.
func (s Status) hasKey() bool { return s == Primary || s == DecryptOnly }
