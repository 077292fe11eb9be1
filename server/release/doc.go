// Package release keeps the fleet's current firmware release: the manifest
// fleetd signed with the current anchor set's firmware key, stored in one
// file, offered to every device that reports an older version and
// broadcast to the connected ones when a release is published.
//
// # Basics
//
// Publish signs a manifest (SUIT-like, package firmware), audits the
// release, makes it current and broadcasts it. CurrentFirmware is what the
// rotation engine offers in answer to a hello.
//
// # Caveats
//
// The image itself never passes through fleetd: the operator gives its
// digest, size and URI, and devices fetch it from the URI. Versions only
// go up: a release not newer than the current one is refused.
package release
