// Package store keeps fleetd's durable state: devices with their key
// versions per slot, and the hash-chained audit log.
//
// # Basics
//
// The Store interface is deliberately narrow so that a distributed backend
// later is a new implementation, not a rewrite; storetest.Run is the
// conformance suite every backend must pass. Bolt is the bbolt
// implementation. A device is one record: every state change of a device
// (a version requested, issued, activated, superseded, retired) is one
// read-modify-write of that record plus its audit records, in one
// transaction, so a crash leaves either all of a change or none of it.
//
// UpdateDevice is durable before it returns: callers acknowledge (send the
// next message) only after it has. Concurrent updates are committed in groups
// (bbolt's Batch): one fsync serves many devices.
//
// # Caveats
//
// The function given to UpdateDevice may run more than once (a group commit
// that fails is retried one by one) and must therefore only change the
// record it is handed; side effects (signing, sending) belong before or after
// it. Records returned by reads are copies; changing them changes nothing.
package store
