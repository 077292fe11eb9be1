package protocol

import "time"

// Limits shared by encoders, decoders and the broker configuration.
const (
	// Version is the protocol version carried in every message header.
	Version = 1

	// MaxPacketSize caps a whole MQTT payload. The largest message, a
	// certificate delivery with a DER leaf, is about 600 bytes, so 4 KiB
	// leaves room for growth while bounding what a hostile peer can make a
	// decoder chew on. The broker is configured with the same cap.
	MaxPacketSize = 4096

	// MessageIDSize is the length of message and rotation ids. Eight random
	// bytes make an accidental collision among one device's in-flight
	// messages negligible while keeping messages compact.
	MessageIDSize = 8

	// KeyIDSize is the length of the COSE kid that names a signing key:
	// the first bytes of SHA-256 over the key's SubjectPublicKeyInfo.
	KeyIDSize = 8

	// MaxDeviceIDLen bounds device identifiers, which appear in topics,
	// certificate subjects and store keys.
	MaxDeviceIDLen = 64

	// MaxClockSkew is how far a message's issued-at may lie in the future
	// before it is refused; devices have cheap clocks.
	MaxClockSkew = 5 * time.Minute
)
