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

var stateNames = [...]string{"unknown", "pending", "issued", "active", "superseded", "retired", "revoked", "failed", "cancelled"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}
