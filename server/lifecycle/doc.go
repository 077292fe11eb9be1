// Package lifecycle is the one place where a key version changes state.
//
// # Basics
//
// Every key a device holds (its identity today; data keys, anchors and
// firmware use the same words where they fit) has versions, and each
// version has a State with an invalid zero. The life cycle is
//
//	(new) -> pending -> issued -> active -> superseded -> retired
//
// with revoked reachable from every live state (pending, issued, active,
// superseded), failed and cancelled ending a rotation that never activated,
// and a slot's first version created active at registration. Legal tells
// whether a move exists.
//
// A Manager, made with Manage for one slot of one device, is the only code
// that assigns a state, in the style of Tink's keyset.Manager: one method
// per legal move (Provision, Request, Issue, Activate, Supersede, Retire,
// Revoke, Fail, Cancel). Each refuses an illegal move with a *MoveError
// (ErrIllegalMove) naming both states and leaves the slot unchanged, and
// returns the Changes it made: the caller writes one audit record per
// Change (Change.Action) and reports each through its OnStateChange hook
// (Change.String is the readable line).
//
// KeyVersion and SlotState live here and are what the store keeps
// (store.KeyVersion and store.SlotState name them), so the stored numbers
// of State never change: only add.
//
// ErrNotAccepted, what every refusal of a credential wraps, lives here too,
// below both the engine that decides and the broker that refuses.
//
// # Caveats
//
// The methods change the record in memory only; the caller makes the
// change durable (one store transaction) before it acts on it or reports
// it. Whether a move is due (a grace window over, a rotation open) is the
// caller's decision; the Manager only keeps the life cycle.
package lifecycle
