package lifecycle

import "fmt"

// State is the life-cycle state of one key version. The zero value is
// invalid, so a record that lost its state is caught.
type State uint8

// Key states, in life-cycle order: pending -> issued -> active ->
// superseded -> retired, with revoked reachable from any live state, and
// failed or cancelled ending a rotation that never activated. The numbers
// are stored: never renumber, only add.
const (
	StateUnknown    State = 0
	StatePending    State = 1 // rotation requested; the device has not enrolled yet
	StateIssued     State = 2 // certificate issued; the device has not confirmed
	StateActive     State = 3 // the device confirmed; the version in use
	StateSuperseded State = 4 // replaced, still accepted until its grace ends
	StateRetired    State = 5 // grace over: refused at the broker
	StateRevoked    State = 6 // refused at once by operator decision
	StateFailed     State = 7 // the rotation failed before activation
	StateCancelled  State = 8 // the rotation was cancelled before activation
)

// numStates bounds the states: every State below it is named.
const numStates = 9

var stateNames = [numStates]string{"unknown", "pending", "issued", "active", "superseded", "retired", "revoked", "failed", "cancelled"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Open reports whether s belongs to a rotation in progress: requested or
// issued, not yet confirmed by the device.
func (s State) Open() bool { return s == StatePending || s == StateIssued }

// Live reports whether a version in state s still counts: open, active or
// within its grace. Revocation applies to live versions only.
func (s State) Live() bool { return s.Open() || s == StateActive || s == StateSuperseded }

// Dead reports whether s is final: no move leaves it, and the slot keeps
// only the most recent dead versions (MaxHistory).
func (s State) Dead() bool {
	return s == StateRetired || s == StateRevoked || s == StateFailed || s == StateCancelled
}

// legal is the life cycle: legal[from] lists the states a version may
// move to. StateUnknown as from stands for a version that does not exist
// yet: it is created pending (a requested rotation) or, as the first
// version of an empty slot, active (the credential given at registration).
var legal = [numStates][]State{
	StateUnknown:    {StatePending, StateActive},
	StatePending:    {StateIssued, StateRevoked, StateFailed, StateCancelled},
	StateIssued:     {StateActive, StateRevoked, StateFailed, StateCancelled},
	StateActive:     {StateSuperseded, StateRevoked},
	StateSuperseded: {StateRetired, StateRevoked},
}

// Legal reports whether a version may move from one state to the other.
// No state moves to itself: repeating a move is the caller's no-op, not
// the life cycle's.
func Legal(from, to State) bool {
	if int(from) >= numStates {
		return false
	}
	for _, s := range legal[from] {
		if s == to {
			return true
		}
	}
	return false
}
