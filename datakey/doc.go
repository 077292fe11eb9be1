// Package datakey keeps a device's symmetric data keys as a versioned
// keyset, Tink-style, and encrypts data under them with AES-GCM.
//
// # Basics
//
// A Keyset maps versions (uint32, increasing) to 16- or 32-byte AES keys,
// each with a Status. Exactly one version is Primary: Encrypt uses it.
// Older versions stay DecryptOnly, so data written before a rotation still
// reads, until a policy retires them. The server delivers each new version
// sealed to the device's identity key (protocol.SealEncrypt0) and escrows a
// copy; the device opens it and calls Rotate, or Add and later SetPrimary.
//
// A ciphertext names the version that made it, like Tink's output prefix:
//
//	0x01 || version (4 bytes, big endian) || nonce (12) || AES-GCM ciphertext and tag (16)
//
// so Decrypt needs no trial decryption, and an operator who recovers one key
// from escrow (fleetctl escrow recover) can see which one with VersionOf and
// decrypt with the standalone Decrypt. The 5-byte prefix is authenticated
// together with the caller's additional data.
//
// MarshalBinary and UnmarshalBinary store a keyset on the device's disk in
// a small, versioned CBOR format that is decoded strictly.
//
// # Caveats
//
// A Keyset is not safe for concurrent use: guard it with a mutex, or hand
// readers a Clone. Copy it only with Clone: a plain assignment shares the
// key bytes, and a Retire on either copy wipes them in both. Methods that
// fail leave the keyset unchanged.
//
// MarshalBinary returns the key material in the clear. Write it with the
// same care as any private key file (atomically, mode 0600, under the
// device's storage encryption if it has one).
//
// Nonces are random, so a single key version must not encrypt more than
// 2^32 messages; rotation normally comes much sooner.
//
// Retire wipes the key bytes the Keyset holds, but Go may have copied them
// elsewhere (garbage collector, callers' slices): it is a best effort, not
// a guarantee. Retired and Destroyed versions stay in the keyset as
// tombstones of a few bytes, so that a version number is never reused and
// Decrypt can say why it refuses.
//
// The key bytes never appear in fmt, slog or JSON output of a Keyset, which
// shows versions and statuses only.
package datakey
