// Package mosquitto makes an external Mosquitto 2.0 broker enforce what
// fleetd's embedded broker does, with what Mosquitto ships: its
// dynamic-security plugin, which fleetd manages as an admin client over
// $CONTROL/dynamic-security/v1 (package dynsec), and its global retain
// switch. This package holds the configuration, the plugin's seed and
// commands, and imports nothing of the server, so that fleetctl can print
// the configuration.
//
// # Basics
//
// Mosquitto authenticates devices by their TLS certificate (require_certificate,
// use_identity_as_username: the certificate's common name, which is the
// device id, becomes the user name). The plugin then decides every
// subscribe and publish by that user name: each device is a dynsec client
// with a role of its own that reaches its up, down and re-enrolment topics
// and the broadcasts, and nothing else (defaultACLAccess denies all). A
// user name the plugin does not know is denied everything, so a device
// fleetd has not provisioned, or has revoked, can open a TLS session and do
// nothing with it.
//
// dynsec.Sync keeps the plugin's clients in step with the store: a device is
// added when it is registered (one or in bulk), before its credential is
// handed out; it keeps its client through rotations and re-enrolment;
// it is deleted when it is revoked (Mosquitto drops
// the client's open sessions at once when its dynsec client is deleted),
// and at every start the whole fleet is replayed. Config renders the
// broker's configuration and SeedFile the plugin's first state, in which
// fleetd's own user name holds the admin role.
//
// Retained publishes are refused by Mosquitto's retain_available false,
// which disconnects any client that sets the flag. Mosquitto 2.0 applies it
// to every client, fleetd included, so with a managed Mosquitto fleetd
// publishes its broadcasts without the flag (link.Options.NoRetain); a
// device that connects later and is behind is sent the anchors in answer to
// its first uplink, as with the embedded broker.
//
// # CA and CRL files
//
// WriteCAFile and Reload keep the broker's cafile holding every root of
// the anchor chain (fleetd's --broker-ca-file and --broker-reload; dynsec
// calls them at start and after each anchor change), so that an anchor
// rotation needs no hand-edited file. Mosquitto 2.0 re-reads cafile only
// when it starts, so its reload command is a restart.
//
// The plugin keys everything on the user name, and every version of a
// device carries the same common name, so it cannot tell a retired version
// from the current one: PlanCRLFile and WriteCRLFile keep the broker's
// crlfile (--broker-crl-file) listing those, one list per root signed with
// its key, so that Mosquitto refuses them in the TLS handshake. Mosquitto
// 2.0 re-reads crlfile on SIGHUP, keeping the lists it read before, among
// which OpenSSL takes the latest: so a new list is always signed a second
// or more after the previous one.
//
// # Birth credentials
//
// A birth credential also carries the device's common name. Config's
// birth listener (BirthListen) trusts only the birth CA and takes the
// whole subject as the user name (BirthUser: "CN=ID"), which no identity
// certificate can have there; Commands give that name a role with the
// device's re-enrolment topics only.
//
// # Caveats
//
// A session opened before its version retired stays open: Mosquitto checks
// the CRL in the handshake only, and the plugin ends sessions per user
// name, not per certificate. See docs/operations.md.
package mosquitto
