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
// # CA file
//
// WriteCAFile and Reload keep the broker's cafile holding every root of
// the anchor chain (fleetd's --broker-ca-file and --broker-reload; dynsec
// calls them at start and after each anchor change), so that an anchor
// rotation needs no hand-edited file. Mosquitto 2.0 re-reads cafile only
// when it starts, so its reload command is a restart.
//
// # Caveats
//
// The plugin keys everything on the user name, and every certificate of a
// device (each identity version, and its birth credential) carries the same
// common name. So the plugin cannot tell a retired version, or a birth
// credential, from the device's current identity: refusing those needs the
// certificate itself refused in the TLS handshake (a CRL), which Mosquitto
// re-reads only when it reloads. See docs/operations.md.
package mosquitto
