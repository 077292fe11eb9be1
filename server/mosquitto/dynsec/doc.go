// Package dynsec keeps an external Mosquitto's dynamic-security plugin in
// step with fleetd's devices, as an admin client over
// $CONTROL/dynamic-security/v1 (package mosquitto has the commands and the
// configuration; this package holds the session and the store).
//
// # Basics
//
// New reads --external-broker: only mosquitto://HOST:PORT is managed. Start
// opens fleetd's admin session (a reconnecting link), replays the whole
// fleet at every connect, and becomes the rotation engine's session
// closer, so that Revoke deletes the device's dynsec client, and Mosquitto
// drops its sessions, before it returns. Provisioner wraps registration,
// which the engine reports only to the audit log: a registered device is
// a client before its credential is handed out. Every command message is
// made from the store's state read just before it is sent, one at a time,
// so a replay cannot undo a revocation made meanwhile; what cannot be sent
// is retried every second.
//
// Several fleetd processes on one broker (workers) must not all replay: a
// replay that read a device before another process revoked it would send
// its client back after the delete. SetReplay gates the replay at connect
// on holding the leader lease; the leader replays when it takes the lease
// (Replay) and re-syncs each device another process revoked (Resync), so
// the last command about a revoked device is its delete. Every process
// still deletes at once on its own revocations.
//
// # Caveats
//
// Mosquitto answers on $CONTROL/dynamic-security/v1/response; answers are
// only logged (a replay's "already exists" is expected), never waited for:
// fleetd's engine never blocks on the broker longer than one PUBACK
// (bounded by commandTimeout).
package dynsec
