// Package cluster lets several fleetd processes ("nodes"), each with its
// embedded broker, serve one fleet from one shared store (store.Cluster,
// PostgreSQL). A device is connected to one node at a time, but a
// rotation, revocation or campaign step may be asked of any node: this
// package gets what the engine sends to the node holding the device's
// session, and runs the work that must happen once per cluster on one node
// only.
//
// # Basics
//
// A Node heartbeats its row (every LeaseTTL/3; alive for LeaseTTL on the
// database's clock), records the sessions its broker accepts and loses
// (SessionObserver, written in 200 ms batches) and takes its mail (every
// Poll, or at once when the store wakes it: LISTEN/NOTIFY on PostgreSQL).
//
// The engine, trust and release services publish through Publisher and
// drop sessions through Closer; neither knows about other nodes:
//
//   - a downlink for a device connected here is published on this node's
//     link; for a device whose session is on another live node it becomes
//     mail to that node, which publishes the bytes unchanged, after this
//     node's delegation when they are signed (each node has its own online
//     key, and the device may not hold it yet). The holder comes from the
//     session snapshot below (a device missing from it is read alone), and
//     downlink mail queued within 5 ms goes in one transaction, in order:
//     a bulk rotation costs one sessions read a second and a transaction
//     per batch, not per downlink. A node mailed a downlink for a device no
//     longer connected to it (the snapshot was stale) reads the holder
//     afresh and mails it on once. A device connected nowhere
//     the cluster knows of gets it published here, as a single fleetd
//     does, after this node's delegation too: workers sharing an external
//     broker record no sessions, and another worker may have answered the
//     device's hello with its own delegation.
//   - broadcasts (kf/b/...) go out here and as mail to every live node,
//     except the delegation, which each node announces for its own key.
//   - Disconnect (revocation) drops local sessions and mails every other
//     live node to do the same; DisconnectCredential goes to the holder.
//
// Sessions answers "is this device connected, since when" across the
// cluster (the local broker first, else a snapshot of the sessions table
// at most a second old), for the campaign runner.
//
// Lead runs a function on exactly one node at a time: the holder of the
// "leader" lease (TTL LeaseTTL, renewed every third of it). The function's
// context ends when a renewal fails or the lease may have run out, so a
// node that stalls stops leading before another takes over.
//
// With a store that has no Cluster capability (bbolt), Open returns a node
// that passes everything through to the local parts and always leads: one
// code path for one process and many.
//
// # Caveats
//
// Mail is not transactional with the device change that caused it: a node
// that dies between its commit and its Send loses that downlink. The store
// holds the desired state and every device reconciles at its next hello,
// so this costs latency, not correctness; a revocation whose mail is lost
// fails the operator's call, and every later connect is refused from the
// store. Mail may hold sealed data keys (encrypted to the device) for the
// moment until its addressee takes it.
package cluster
