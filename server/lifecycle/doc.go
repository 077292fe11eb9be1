// Package lifecycle is the one place where a key version changes state.
//
// # Basics
//
// Every key a device holds (its identity today; data keys, anchors and
// firmware use the same words where they fit) has versions, and each
// version has a State. The transition methods are the only code that
// assigns a state: each checks that the move is legal, refuses an illegal
// one with a typed error, and returns the Changes it implies, which the
// caller audits and reports.
//
// # Caveats
//
// The methods change the record in memory only; the caller makes the
// change durable (one store transaction) before it acts on it or reports
// it.
package lifecycle
