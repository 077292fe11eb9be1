// Package release keeps the fleet's firmware releases: the manifests
// fleetd signed with the current anchor set's firmware key, stored in one
// file. The current release is offered to every device that reports an
// older version and broadcast to the connected ones when it is published;
// staged releases reach only the devices a firmware campaign pins to them.
//
// # Basics
//
// Publish signs a manifest (SUIT-like, package firmware), audits the
// release, makes it current and broadcasts it. Stage signs and keeps one
// without making it current; Promote makes a staged one current when its
// campaign completes. FirmwareFor is what the rotation engine offers a
// device in answer to a hello: the current release, or the staged one it
// is pinned to.
//
// Revert is a campaign rollback's: devices refuse any manifest whose
// version (SUIT's sequence number) is not above the one they run, so the
// way back to an earlier image is a new manifest carrying it under a new,
// higher version, made once per release rolled back and offered to every
// device that runs that release.
//
// # Caveats
//
// The image itself never passes through fleetd: the operator gives its
// digest, size and URI, and devices fetch it from the URI. Versions only
// go up: a release not newer than every one known (current or staged) is
// refused, and a rollback release takes the next number. Only the last few
// releases made current are kept, and a rollback release re-signs the
// earlier manifest with the current firmware key, which must still verify
// it (a firmware key rotated since the earlier release was signed makes
// its rollback fail; publish a new release instead).
package release
