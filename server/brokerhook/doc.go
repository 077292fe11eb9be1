// Package brokerhook answers the HTTP authentication and authorization
// requests of brokers that delegate access control (EMQX 5's HTTP
// authenticator and authorizer; HiveMQ and others through an extension
// that makes the same calls), so that they enforce what fleetd's embedded
// broker does.
//
// # Basics
//
// The broker authenticates devices by their TLS certificate and passes the
// certificate's common name (the device id, or "fleetd" for fleetd's own
// session) as the user name. Authenticate allows a connection whose client
// id matches that name and whose device is registered and not revoked.
// Authorize decides each publish and subscribe with broker.Allowed: a
// device reaches its own up, down and re-enrolment topics and the
// broadcasts; fleetd the protocol's topics; a device's retained publish is
// denied. Both read the store on every request, so a revocation holds from
// the next request on.
//
// The request bodies are templates the operator configures in the broker;
// docs/operations.md gives the ones to use. EMQX fills placeholders as
// strings inside a JSON template, so "retain" is read as a JSON boolean or
// as the string "true"/"false".
//
// # Caveats
//
// A hook cannot end a session: a revoked device's open session stays until
// it reconnects, its every publish and subscribe refused meanwhile (with the
// broker's authorization cache off). Nor does it see the certificate's
// serial or issuer, so, as with Mosquitto, it cannot tell a retired version
// or a birth credential from the device's current identity.
package brokerhook
