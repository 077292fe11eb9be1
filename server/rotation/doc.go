// Package rotation is fleetd's rotation engine: it keeps, per device and
// slot, the desired and the reported key version and moves each version
// through pending -> issued -> active -> superseded -> retired, through
// package lifecycle's Manager, reporting each lifecycle.Change.
//
// # Basics
//
// Operators (and later campaigns and policies) only change desired state:
// RequestRotation records a pending version. A device that connects sends
// hello; Reconcile computes the steps that take it from what it reports to
// what is desired and sends them. Offline devices need nothing pushed.
//
// Every step is keyed by (device, slot, version) and idempotent: a
// duplicate enroll for an issued version with the same key (a redelivery
// with the same message id, or a retry with a fresh one) gets the same
// certificate again, a duplicate activation changes nothing, any other
// replay (same message id) is refused. Each state change is durable in the
// store, with its audit record, before the engine sends the message that
// follows from it.
//
// Uplinks are handled by a fixed pool of workers sharded by device, so one
// device's messages are processed in order while many devices proceed in
// parallel (and their store writes share group commits).
//
// # Caveats
//
// A refused uplink changes nothing. Its Reason is counted (Stats), logged,
// and answered to the device with the reason's wire code (Reasons is the
// one table), at most once per device and reason per AnswerInterval. The
// in-memory replay cache is lost on restart; the message ids recorded with
// each version keep replays of state-changing messages refused across
// restarts, and the issued-at freshness window bounds the rest.
package rotation
