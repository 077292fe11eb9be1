// Package broker runs the embedded MQTT broker (mochi-mqtt) with keyfleet's
// authentication and access control, and holds the hooks that give any
// mochi broker the same rules.
//
// # Basics
//
// Clients connect over TLS and must present a certificate that chains to
// one of the fleet's CAs (every anchor root, or the birth CA): anything
// else is refused in the handshake (ChainsToFleet, counted as
// tls:untrusted), before any MQTT is parsed. Expiry is left to the auth
// hook, so that an expired identity within its renewal window still gets
// its renew-only session. The AuthHook binds the connection to the identity in that certificate
// (identity.Of): a device's client id must equal its device id, and its
// credential must still be accepted (CredentialChecker: issued, active or
// within grace, device not revoked). The ACLHook is default-deny: a device
// publishes only to its own up topic and reads only its own down topic and
// the broadcast topics; fleetd (role server) reads and writes the protocol's
// topics. Identity always comes from the certificate, never the client id.
//
// A device may not publish retained messages (refused, disconnected,
// counted as acl:retain), nor more than its token bucket allows
// (DefaultUplinkBurst messages, refilled at DefaultUplinkRate per second,
// kept per device across reconnects): over it, it is disconnected and
// counted as flood. Every refusal is counted in Denials; its log line is
// written at most once per client and reason every 10 s, with the number
// left out since ("suppressed").
//
// # Caveats
//
// Hooks never block on the network; the credential check is a local store
// read. Emergency revocation must also disconnect live sessions:
// Embedded.Disconnect does that.
package broker
