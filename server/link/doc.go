// Package link keeps fleetd's own MQTT session to the broker (embedded or
// external) up: it dials, subscribes to the shared uplink topics, hands
// every message to a callback, and reconnects with backoff when the
// session drops. The engine, the trust service and the firmware releases
// all publish through it, so none of them holds a connection that may have
// gone stale.
//
// # Basics
//
// Start connects once (an error there is fleetd failing to start) and then
// keeps the session up until the context ends or Close is called. After
// every successful connect, OnConnect runs: fleetd republishes the
// retained anchors there.
//
// # Caveats
//
// Publishing while the session is down fails with ErrNotConnected at once;
// callers treat that like any lost downlink: devices converge at their next
// hello. A Link is safe for concurrent use.
package link
