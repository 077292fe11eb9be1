// Package firmware will hold keyfleet's signed firmware manifests and the
// device side of A/B firmware installs.
//
// # What will live here
//
// Manifests in CBOR inside COSE_Sign1, shaped after SUIT (RFC 9019 and
// RFC 9124): vendor and class identifiers, version, digest and size of the
// image, signed with the firmware-signing key of the current trust-anchor
// set. The agent verifies a manifest against its anchors, installs the image
// into the inactive of two slots, boots it, confirms it or rolls back, and
// reports the firmware version it runs. Rotating the firmware-signing key
// goes through the trust-anchor chain, so a device that missed a rotation
// still accepts new firmware.
//
// # Caveats
//
// Nothing is implemented yet: the walking skeleton rotates device
// identities only. Like protocol, this package will do no network I/O; the
// agent (package device) and fleetd call it.
package firmware
