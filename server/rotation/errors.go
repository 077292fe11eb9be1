package rotation

import (
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
)

// Errors of operator requests and credential checks. The refusals match
// lifecycle.ErrNotAccepted too, which the broker reads as "refused" (any
// other error from a check means "could not decide").
var (
	// ErrRevoked: the device is revoked; nothing may be done for it.
	ErrRevoked = errors.New("rotation: device is revoked")
	// ErrAlreadyRevoked: Revoke found the device revoked already. The
	// error is an *AlreadyRevokedError, which says since when; it matches
	// ErrRevoked too.
	ErrAlreadyRevoked = errors.New("rotation: device already revoked")
	// ErrRefused: a credential is not (or no longer) accepted.
	ErrRefused = errors.New("rotation: credential refused")
)

// revokedError is ErrRevoked for one device.
type revokedError struct{ device string }

func revoked(device string) error { return &revokedError{device} }

func (e *revokedError) Error() string { return "rotation: device " + e.device + " is revoked" }

func (e *revokedError) Is(target error) bool {
	return target == ErrRevoked || target == lifecycle.ErrNotAccepted
}

// AlreadyRevokedError is what Revoke returns for a device that was revoked
// before: an operator who revokes twice learns when the first one was.
type AlreadyRevokedError struct {
	Device string
	At     time.Time
}

func (e *AlreadyRevokedError) Error() string {
	return fmt.Sprintf("rotation: device %s was already revoked at %s", e.Device, e.At.UTC().Format(time.RFC3339))
}

// Is makes errors.Is match ErrAlreadyRevoked and ErrRevoked.
func (e *AlreadyRevokedError) Is(target error) bool {
	return target == ErrAlreadyRevoked || target == ErrRevoked
}

// refusedError is ErrRefused with why.
type refusedError struct{ msg string }

// refused says why a credential is refused, in words for the log: the
// component prefix is added once here.
func refused(format string, args ...any) error {
	return &refusedError{"rotation: credential refused: " + fmt.Sprintf(format, args...)}
}

func (e *refusedError) Error() string { return e.msg }

func (e *refusedError) Is(target error) bool {
	return target == ErrRefused || target == lifecycle.ErrNotAccepted
}
