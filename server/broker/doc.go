// Package broker runs the embedded MQTT broker (mochi-mqtt) with keyfleet's
// authentication and access control, and holds the hooks that give any
// mochi broker the same rules.
//
// # Basics
//
// Clients connect over TLS and must present a certificate from the fleet
// CA. The AuthHook binds the connection to the identity in that certificate
// (identity.Of): a device's client id must equal its device id, and its
// credential must still be accepted (CredentialChecker: issued, active or
// within grace, device not revoked). The ACLHook is default-deny: a device
// publishes only to its own up topic and reads only its own down topic and
// the broadcast topics; fleetd (role server) reads and writes the protocol's
// topics. Identity always comes from the certificate, never the client id.
//
// # Caveats
//
// Hooks never block on the network; the credential check is a local store
// read. Emergency revocation must also disconnect live sessions:
// Embedded.Disconnect does that.
package broker
