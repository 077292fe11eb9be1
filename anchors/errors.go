package anchors

import "errors"

// Decoding errors, returned by Parse and DecodeChain for hostile or broken
// input, and by Sign, Next and EncodeChain when asked to produce something
// a device would refuse. Wrap them with context, never replace them: devices
// count rejections by these. Their texts carry no package prefix because
// they never travel alone: every exported function wraps them as
// "anchors: <operation>: <sentinel>: <detail>".
var (
	// ErrTooLarge: a signed set exceeds MaxSetSize or a chain exceeds
	// MaxChainBytes. Checked before any decoding, so oversize input costs
	// nothing.
	ErrTooLarge = errors.New("too large")
	// ErrMalformed: the bytes are not a well-formed, canonically encoded
	// signed set or chain (bad CBOR or COSE, unknown or duplicate fields,
	// limits exceeded, invalid keys or certificate, an empty chain, a
	// duplicated chain entry).
	ErrMalformed = errors.New("malformed")
)

// Walk errors. Each names one reason a device refuses a chain, so that a
// device reports what happened and an operator can tell an attack from a
// server bug. On any of them the device keeps the set it has.
var (
	// ErrNoCurrent: Walk was called without a current set (a device that
	// was never provisioned has nothing to walk from), or Next without a
	// previous one.
	ErrNoCurrent = errors.New("no current set")
	// ErrRollback: every entry of the chain is older than the current set.
	// Someone replayed old history, which must never move a device back.
	ErrRollback = errors.New("rollback to an older set")
	// ErrFork: the chain contradicts history the device holds or itself:
	// the entry at the current version differs from the current set, two
	// entries share a version, or a set's Prev does not name its
	// predecessor. A step's Prev is checked after its signatures, so a fork
	// found there was signed by the predecessor's keys: treat it as a
	// compromised signing key or a server bug, not as line noise.
	ErrFork = errors.New("fork in the set history")
	// ErrSkip: the sets newer than the current one do not continue it one
	// version at a time. Every step must be checked against its
	// predecessor's keys, so a gap cannot be bridged.
	ErrSkip = errors.New("version skipped")
	// ErrTooLong: the chain holds more newer sets than WalkOptions.MaxSteps.
	// Checked before any signature is verified, so an endless chain costs a
	// device little.
	ErrTooLong = errors.New("chain too long")
	// ErrRevokedKey: a set carries a signature by a key that the current set
	// or a set walked before it revoked. That key could not sign a step
	// anyway; the distinct error is there because its use is evidence that
	// the key is in someone's hands.
	ErrRevokedKey = errors.New("signature by a revoked key")
	// ErrUnknownKey: a set carries a signature by a key that is not one of
	// its predecessor's two signing keys. Extra signatures are refused, not
	// ignored, so that a set's signatures always mean exactly "set N's root
	// and update keys approved this".
	ErrUnknownKey = errors.New("signature by an unknown key")
	// ErrBadSignature: a signature by one of the predecessor's signing keys
	// does not verify.
	ErrBadSignature = errors.New("bad signature")
	// ErrMissingSignature: a set lacks the signature of one of its
	// predecessor's two signing keys (the root CA key or the update key).
	// Both are required, so one stolen key cannot move the fleet's anchors.
	ErrMissingSignature = errors.New("missing signature")
	// ErrRevocationDropped: a set no longer lists a key id that an earlier
	// set revoked. Revocation is permanent, and a device keeps only its
	// current set, so a dropped id would be forgotten for good.
	ErrRevocationDropped = errors.New("revocation dropped")
)
