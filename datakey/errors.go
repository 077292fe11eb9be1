package datakey

import "errors"

// Errors of keyset changes: Add, Rotate, SetPrimary, Retire, Destroy.
var (
	// ErrInvalidVersion: version 0, which the protocol uses for "none".
	ErrInvalidVersion = errors.New("datakey: invalid version 0")
	// ErrKeySize: key material that is not an AES-128 or AES-256 key.
	ErrKeySize = errors.New("datakey: key must be 16 or 32 bytes")
	// ErrVersionNotNewer: Add of a version that is not above every version
	// the keyset has ever held, including retired ones. Versions are never
	// reused, so a ciphertext names one key for ever.
	ErrVersionNotNewer = errors.New("datakey: version not newer than the keyset's")
	// ErrUnknownVersion: the keyset has no such version. Decrypt returns it
	// for a ciphertext made with a version the device never received.
	ErrUnknownVersion = errors.New("datakey: unknown key version")
	// ErrRetirePrimary: Retire of the primary version. Promote another
	// version first, so that the keyset can always encrypt.
	ErrRetirePrimary = errors.New("datakey: cannot retire the primary key")
	// ErrIllegalTransition: a status change the life cycle does not allow,
	// such as promoting a retired version or destroying one still in use.
	ErrIllegalTransition = errors.New("datakey: illegal status change")
)

// Errors of Encrypt and Decrypt.
var (
	// ErrNoPrimary: Encrypt on an empty keyset.
	ErrNoPrimary = errors.New("datakey: keyset has no primary key")
	// ErrRetired: the ciphertext's version is retired; the device has
	// deleted that key. The escrowed copy may still decrypt it.
	ErrRetired = errors.New("datakey: key version retired")
	// ErrDestroyed: the ciphertext's version is destroyed, escrow included:
	// the data is gone.
	ErrDestroyed = errors.New("datakey: key version destroyed")
	// ErrMalformed: the input is too short or does not start with the
	// format byte of this package.
	ErrMalformed = errors.New("datakey: malformed ciphertext")
	// ErrVersionMismatch: standalone Decrypt of a ciphertext made with
	// another version than the key offered.
	ErrVersionMismatch = errors.New("datakey: ciphertext is for another key version")
	// ErrDecrypt: authentication failed: wrong key or additional data, or
	// the ciphertext was altered.
	ErrDecrypt = errors.New("datakey: cannot decrypt")
)

// Errors of UnmarshalBinary.
var (
	// ErrCorrupt: stored keyset bytes that are not a valid keyset of a
	// format this package writes.
	ErrCorrupt = errors.New("datakey: invalid stored keyset")
)
