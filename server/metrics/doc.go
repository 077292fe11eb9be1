// Package metrics turns what fleetd's parts already count into Prometheus
// metrics: the SLIs of docs/observability.md (rotation success, time to
// rotate, old-key usage, authentication failures, revocation latency,
// orchestration errors, audit completeness, exposure signals, recovery
// time) and the figures of the debug dashboard (HSM signing latency,
// certificates nearing expiry on devices not seen).
//
// # Basics
//
// The domain packages do not import client_golang. This package adapts
// them: it observes every lifecycle.Change (Observe wraps fleetd's
// OnStateChange hook), times signatures by wrapping the key custody
// (Keys), times revocations by wrapping the engine's Revoke (Revoker), and
// reads the engine's Stats and the broker's Denials at each scrape
// (Attach). Every metric lives in the Metrics' own registry, never in
// client_golang's global one, so that several fleetd servers can run in
// one process (tests, the simulator).
//
// Labels are of bounded cardinality only: slot, result, reason, kind,
// signal, state, window. A device id is never a label value.
//
// # Caveats
//
// The audit-written counter reads the audit records appended since the
// last scrape, so a scrape costs one read of the records written since
// the previous one. The fleet scan (devices by state, certificates nearing
// expiry) reads every device record: it runs every ScanEvery, not at
// scrape time.
package metrics
