package protocol

import "errors"

// Decoding and verification errors. Receivers count rejections by these, so
// each names one reason; wrap them with context, never replace them.
var (
	// ErrTooLarge: the packet exceeds MaxPacketSize.
	ErrTooLarge = errors.New("protocol: message exceeds size limit")
	// ErrMalformed: the bytes are not a well-formed message of this protocol
	// (bad CBOR, wrong types, unknown or duplicate fields, limits exceeded).
	ErrMalformed = errors.New("protocol: malformed message")
	// ErrUnsupportedVersion: the header names a protocol version we do not speak.
	ErrUnsupportedVersion = errors.New("protocol: unsupported version")
	// ErrUnknownType: the header names a message type we do not know.
	ErrUnknownType = errors.New("protocol: unknown message type")
	// ErrMissingField: a field the message type requires is absent or empty.
	ErrMissingField = errors.New("protocol: missing required field")
	// ErrBadSignature: the COSE_Sign1 envelope does not verify with the key
	// the receiver expects, or names another key.
	ErrBadSignature = errors.New("protocol: bad signature")
	// ErrUnsigned: a message type that must be signed arrived bare, or one
	// that must be bare arrived signed.
	ErrUnsigned = errors.New("protocol: message not signed as required")
	// ErrExpired: a command's expiry has passed.
	ErrExpired = errors.New("protocol: message expired")
	// ErrBadDeviceID: a device id is empty, too long or has characters that
	// are not allowed in topics and certificate names.
	ErrBadDeviceID = errors.New("protocol: invalid device id")
)
