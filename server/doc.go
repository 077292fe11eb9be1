// Package server assembles fleetd: the store, key custody, the CA, the
// online signing key, the embedded broker, the rotation engine and the admin
// API, and runs them until the context ends.
//
// # Basics
//
// Init creates a deployment once: keys in the token (or, behind
// InsecureSoftKeys, in files), the CA certificate, fleetd's own TLS
// credential and the first operator credential. Start opens what Init made
// and serves. Everything is in Config.DataDir except the keys in the token.
//
// # Caveats
//
// fleetd's TLS key (broker endpoint, its MQTT client, the admin API) is a
// software key in DataDir/pki: a TLS handshake per device reconnect must not
// cost an HSM operation. The keys that sign what devices trust (the CA key
// and the update key) are the ones in the token.
package server
