package rotation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// errSweepDone stops a grace listing once it passes the sweep's horizon.
var errSweepDone = errors.New("rotation: grace sweep done")

// SweepGrace retires, from the store, every superseded version whose grace
// has ended, and schedules on this engine's grace timer those that end
// within horizon. The grace timers of one process are loaded at its start
// and pushed at the activations it handles; when several fleetd processes
// share the store, a version activated by a process that then died has no
// timer anywhere until some process restarts. The cluster's leader calls
// SweepGrace periodically so that every grace ends on time whichever
// process saw the activation. It is idempotent with the timers: retiring a
// retired version changes nothing, and a version already on the timer is
// not queued twice. It returns how many versions it retired itself.
func (e *Engine) SweepGrace(ctx context.Context, horizon time.Duration) (int, error) {
	now := e.now()
	until := now.Add(horizon)
	var due []graceItem
	err := e.forEachGrace(ctx, func(it graceItem) error {
		if it.at.After(until) {
			return errSweepDone
		}
		if it.at.After(now) {
			e.grace.push(it)
			return nil
		}
		due = append(due, it)
		return nil
	})
	if err != nil && !errors.Is(err, errSweepDone) {
		return 0, fmt.Errorf("rotation: grace sweep: %w", err)
	}
	n := 0
	for _, it := range due {
		if ctx.Err() != nil {
			return n, fmt.Errorf("rotation: grace sweep: %w", ctx.Err())
		}
		if e.retire(ctx, it) {
			n++
		}
	}
	return n, nil
}

// forEachGrace lists the superseded versions whose grace is running:
// through the store's GraceIndex, earliest deadline first, when it has one
// (start-up and sweeps then do not grow with the fleet), else by reading
// every device; that order is not by deadline, so there errSweepDone from
// fn skips one version instead of ending the listing.
func (e *Engine) forEachGrace(ctx context.Context, fn func(graceItem) error) error {
	if gi, ok := e.st.(store.GraceIndex); ok {
		return gi.ForEachGrace(ctx, func(dev string, slot uint8, v uint32, until time.Time) error {
			return fn(graceItem{device: dev, slot: protocol.Slot(slot), version: v, at: until})
		})
	}
	return e.st.ForEachDevice(ctx, func(d *store.Device) error {
		for slot, s := range d.Slots {
			for _, k := range s.Versions {
				if k.State != lifecycle.StateSuperseded {
					continue
				}
				if err := fn(graceItem{device: d.ID, slot: slot, version: k.Version, at: k.GraceUntil}); err != nil && !errors.Is(err, errSweepDone) {
					return err
				}
			}
		}
		return nil
	})
}
