package lifecycle

import (
	"errors"
	"fmt"
)

// Errors of the transition methods.
var (
	// ErrIllegalMove: the life cycle has no such move (see Legal). The
	// error returned is a *MoveError naming the version and both states.
	ErrIllegalMove = errors.New("lifecycle: illegal move")
	// ErrUnknownVersion: the slot holds no version of that number.
	ErrUnknownVersion = errors.New("lifecycle: unknown version")
	// ErrRotationOpen: a rotation is already open (a version pending or
	// issued); a slot has at most one.
	ErrRotationOpen = errors.New("lifecycle: a rotation is open")
)

// ErrNotAccepted is what every refusal of a credential wraps: the key
// version it proves is not (or no longer) accepted, or its device is
// revoked. The broker reads it as "refused", any other error as "could not
// decide"; it lives here, below both the engine and the broker, so that
// neither imports the other.
var ErrNotAccepted = errors.New("credential not accepted")

// MoveError is an illegal move: what was asked and from where.
type MoveError struct {
	Device  string
	Slot    SlotKind
	Version uint32
	From    State
	To      State
}

func (e *MoveError) Error() string {
	return fmt.Sprintf("lifecycle: %s: %s v%d cannot move from %v to %v", e.Device, e.Slot, e.Version, e.From, e.To)
}

// Unwrap makes errors.Is(err, ErrIllegalMove) hold.
func (e *MoveError) Unwrap() error { return ErrIllegalMove }
