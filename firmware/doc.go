// Package firmware holds keyfleet's signed firmware manifests and the device
// side of A/B firmware installs: verify a manifest against the trusted
// firmware-signing key, write the image into the inactive of two slots, try
// it once, and confirm it or roll back, so a device always keeps an image
// that boots.
//
// # Basics
//
// A Manifest is shaped after SUIT (RFC 9019, RFC 9124) but compact: one CBOR
// map with small integer keys (format, version, vendor id, class id,
// SHA-256 digest, size, optional URI) in core deterministic encoding, inside
// a tagged COSE_Sign1 signed with ES256 over P-256. The protected header
// carries the algorithm and the kid (protocol.KeyID of the signing key),
// the unprotected header is empty, and the external AAD
// "keyfleet/firmware/v1" keeps firmware signatures apart from protocol
// messages. Sign builds one; Verify parses one as strictly as package
// protocol parses messages (size cap, no duplicate keys, no
// indefinite lengths, no tags in the payload, unknown fields refused,
// canonical encoding required) and checks the kid before the signature,
// so a manifest signed by a rotated-out key fails with ErrUntrustedKey.
//
// Slots keeps a directory with a.img, b.img and state.json, which names
// the active slot, holds each slot's version and signed manifest, the trial
// and its attempt count, and the failed versions. Every file is written
// atomically (write, fsync, rename, fsync the directory: internal/fsutil). Install verifies the manifest, checks vendor and class
// (ErrWrongClass), refuses any version not newer than the running one
// (ErrDowngrade, which also stops replays) or one that failed before
// (ErrFailedVersion), checks the image, and writes it into the inactive
// slot as a trial; nothing on disk changes when it refuses. Boot counts the
// trial attempt on disk, reads the image back, checks it again, runs the
// caller's boot check, and then either makes the trial slot active or
// rolls back. A crash or power loss after the attempt was counted rolls
// back on the next OpenSlots, like a bootloader's boot counter: the device
// never boots an unconfirmed image twice.
//
// Errors are grouped sentinels (see errors.go), wrapped with context; use
// errors.Is, and IsRejection to tell a bad update from an I/O failure.
//
// # Caveats
//
// Verify trusts exactly one key. Following a firmware-key rotation through
// the trust-anchor chain, and picking the key to pass, is the caller's job
// (package device); this package does no network I/O and never fetches
// Manifest.URI.
//
// Boot simulates what a bootloader does; it does not start the image. It
// re-checks the digest and size of the trial image, but not the manifest's
// signature, which was verified at Install and is kept in the state file:
// the state file is trusted as much as the images next to it. Images are
// handled in memory, so they must fit in it.
//
// A trial gets MaxBootAttempts (one) attempt, and a version that failed,
// including by a power cut during its boot check, is never installed again:
// the server has to publish a newer version. Installing over a trial that
// has not booted yet replaces it.
//
// A Slots is safe for concurrent use, but Boot holds its lock while the
// boot check runs, so the check must not call the Slots. Only one Slots may
// have a directory open at a time; nothing enforces it.
package firmware
