// Package anchors keeps the fleet's trust anchors (the CA root certificate,
// the server's update-signing key and the firmware-signing key) as a chain
// of versioned sets, TUF-style: set N+1 is signed by set N's root key and
// update key, so a device that slept through several rotations walks from
// the set it holds to the newest one, checking each step with keys it
// already trusts. The package does no I/O.
//
// # Basics
//
// A Set is CBOR with integer keys in core deterministic encoding. Signed,
// it travels as a tagged COSE_Sign (RFC 9052, tag 98) carrying one ES256
// signature per signer, each naming its key by kid (protocol.KeyID) in its
// protected header. Signatures use the external AAD "keyfleet/anchors/v1",
// so nothing else the same keys sign can pass for a set.
//
// The server issues version 1 with Genesis (self-signed by its own root and
// update keys) and every later one with Next, which fills Version and Prev
// (the SHA-256 of the previous signed set), carries revocations forward and
// insists on exactly the previous set's two signing keys. It publishes the
// recent sets, oldest first, with EncodeChain (or in protocol.Anchors).
//
// A device is provisioned with one signed set through TrustOnInstall and
// stores its bytes. When a chain arrives it calls DecodeChain, then Walk,
// which returns the newest set or an error naming exactly why the chain was
// refused (ErrRollback, ErrFork, ErrSkip, ErrTooLong, ErrRevokedKey,
// ErrUnknownKey, ErrBadSignature, ErrMissingSignature, ErrRevocationDropped,
// ErrMalformed). Walk is pure: on error the device simply keeps its set; on
// success it stores the returned set's Raw bytes. Walking a chain whose
// newest set is the current one returns the current set and nil, because
// the retained chain topic delivers it on every reconnect.
//
// Every decoder treats input as hostile: sizes are capped before decoding
// (MaxSetSize, MaxChainBytes), CBOR is decoded with the strict options of
// package protocol (no duplicate keys, indefinite lengths or tags; capped
// nesting, arrays and maps; no unknown fields) and must be canonical, and
// the COSE headers have one accepted layout.
//
// # Caveats
//
// Version 1, or whatever set a device is provisioned with, is trusted on
// install: its signatures prove nothing about where it came from, so
// provisioning must be as trusted as the factory. TrustOnInstall checks the
// self-signatures of a version 1 only to catch a broken installer.
//
// WalkOptions.MaxSteps (DefaultMaxSteps, 16) bounds the sets one walk may
// apply. It is checked while the entries are parsed and before any
// signature is verified, so a hostile or runaway chain costs a device a
// few parses, not hundreds of ECDSA verifications. A device more steps
// behind needs the server to send the chain in slices (each walk lands it
// further) or to re-provision it.
//
// Walk has no clock: it cannot tell a fresh chain from an old one that
// stops early (a freeze attack). It guarantees the device never goes back
// or sideways, not that it hears of the newest set; the server's view of
// the anchors version each device reports is what catches a stale device.
//
// A set's revocations take effect from the next step on: the usual reason
// for set N+1 is to replace and revoke set N's update key, which must still
// sign that step. Revocation lists are cumulative and never shrink, and are
// capped at MaxRevoked ids.
//
// A set may also name an external issuer (Issuers: step-ca's roots and
// intermediates, at most MaxIssuers): devices then accept their own new
// certificates from it too. It signs no set and vouches for no server;
// it only widens which CA may certify the device's next key.
//
// Both keys of a set sign the next one, so losing either key stops anchor
// rotation for good (devices would need re-provisioning); keep both in the
// HSM with backups. One stolen key alone cannot move the anchors.
package anchors
