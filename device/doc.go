// Package device is the keyfleet device agent as a library: the slot
// keystore on disk, the MQTT session with the fleet, and the handlers that
// carry out the server's rotate, cert and retire commands. cmd/fleet-agent
// runs it on a Linux device; the simulator runs thousands in one process.
//
// # Basics
//
// The keystore keeps each identity version in its own directory
// (identity/v{N}/key.pem, cert.pem) and a small state file naming the active,
// pending and previous versions. Every write is atomic (write, fsync,
// rename, fsync the directory), so a crash at any point leaves a state file
// that names credentials that exist.
//
// A rotation goes: rotate -> new key in pending -> enroll (CSR signed by the
// new key, inside COSE_Sign1 signed by the active key) -> cert, verified
// against the fleet CA and the pending key -> reconnect with the pending
// credential -> only once the broker accepts it, pending becomes active ->
// activated (signed with the new key) -> the previous version is kept until
// the server says retire. The agent says hello with its versions on every
// connect; the server answers with whatever is left to do.
//
// Beside the identity slot, each concern has its own file: the signed
// trust-anchor chain the agent walks (anchors.go), data keys sealed to the
// identity key (datakeys.go), two-slot firmware updates with a boot check
// and rollback (firmware.go), re-enrolment with the birth credential after
// an absence past every window (reenroll.go), and what a factory station
// installs (install.go).
//
// # Caveats
//
// On start the agent tries a pending credential that has a certificate
// first and falls back to the active one, so a crash between receiving a
// certificate and confirming it never strands the device. Downlink
// signatures are checked with the server's online key, itself checked
// against the update key installed at provisioning.
package device
