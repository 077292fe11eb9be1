package rotation

import (
	"context"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// CancelRotation ends the device's open identity rotation to version as
// cancelled (a campaign's rollback): the version never activates and the
// broker refuses its certificate if one was issued, so the device stays on
// (or falls back to) its active credential. It reports whether it ended
// anything: a version already active or closed is left as it is.
func (e *Engine) CancelRotation(ctx context.Context, device string, version uint32, actor, detail string) (bool, error) {
	return e.endRotation(ctx, device, version, actor, detail, (*lifecycle.Manager).Cancel)
}

// FailRotation ends the device's open identity rotation to version as
// failed (a campaign gave up on it); see CancelRotation.
func (e *Engine) FailRotation(ctx context.Context, device string, version uint32, actor, detail string) (bool, error) {
	return e.endRotation(ctx, device, version, actor, detail, (*lifecycle.Manager).Fail)
}

func (e *Engine) endRotation(ctx context.Context, device string, version uint32, actor, detail string,
	end func(*lifecycle.Manager, uint32, time.Time) ([]lifecycle.Change, error)) (bool, error) {
	var changes []lifecycle.Change
	now := e.now()
	_, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changes = nil
		s := d.Slot(credentialSlot)
		if open := s.Open(); open == nil || open.Version != version {
			return nil, store.ErrNoChange
		}
		c, err := end(lifecycle.Manage(s, device, credentialSlot, actor), version, now)
		if err != nil {
			return nil, err
		}
		changes = c
		ev := events(credentialSlot, c)
		ev[0].Detail = detail
		return ev, nil
	})
	if err != nil {
		return false, fmt.Errorf("rotation: end rotation of %s to version %d: %w", device, version, err)
	}
	e.emit(changes)
	return len(changes) > 0, nil
}
