// Package protocol defines keyfleet's wire: the message types exchanged
// between fleetd and device agents, their CBOR encoding, the COSE_Sign1
// envelope that authenticates them, the MQTT topic names and the size limits.
//
// # Basics
//
// Every message is a CBOR map with small integer keys (see docs/protocol.cddl),
// encoded with the core deterministic rules of RFC 8949 §4.2.1 so that the same
// message always has the same bytes. Keys 1-6 form a common header (protocol
// version, message type, message id, rotation id, issued-at, expiry); keys
// from 10 up carry the type's own fields. Messages that need authenticity are
// wrapped in a tagged COSE_Sign1 (RFC 9052) signed with ES256; a certificate
// delivery is not, because the certificate is already signed by the CA and
// bound to a key the device generated. It even leaves that key out (the
// device sent it in its CSR) and the device puts it back before checking
// the certificate (CompactLeaf, ExpandLeaf).
//
// The package also holds the CBOR and COSE code every keyfleet format
// shares (cbor.go, cose.go): the deterministic encoding and strict decoding
// modes, built once (MarshalCanonical, UnmarshalStrict, NewCBOR for other
// limits), and COSE_Sign1 signing and parsing with external AAD and the
// key id in the protected header (SignSign1, ParseSign1). Packages anchors,
// firmware and datakey use them rather than building their own.
//
// Decoders treat their input as hostile: they cap the packet at MaxPacketSize
// and reject duplicate map keys, indefinite lengths, tags inside payloads,
// deep nesting, long arrays, unknown fields and invalid UTF-8.
//
// # Caveats
//
// The package does no I/O and imports nothing else of keyfleet's: it is the
// leaf every other package agrees on. Replay protection needs state, so it
// lives with the receivers (server/rotation, device); this package only
// carries the message id, issued-at and expiry they need for it.
package protocol
