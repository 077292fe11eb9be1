package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Revoke marks device revoked: every live version of every slot becomes
// revoked, the broker drops the device's sessions at once and refuses it
// from then on, and the engine refuses its re-enrolment and key
// deliveries. It is audited. A device revoked before is left as it is and
// reported with an *AlreadyRevokedError (ErrAlreadyRevoked), which says
// when; its sessions are dropped again all the same, so that a revoke
// retried after a crash between the commit and the drop (or one whose drop
// went to a node that was down) still ends the session.
func (e *Engine) Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error) {
	start := time.Now()
	now := e.now()
	var changes []lifecycle.Change
	_, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changes = nil
		if d.Revoked {
			return nil, &AlreadyRevokedError{Device: device, At: d.RevokedAt}
		}
		d.Revoked, d.RevokedAt = true, now
		audit := []store.Event{{Action: "revoked", Device: device, Actor: actor, Detail: reason}}
		slots := make([]protocol.Slot, 0, len(d.Slots))
		for s := range d.Slots {
			slots = append(slots, s)
		}
		slices.Sort(slots)
		for _, s := range slots {
			c := lifecycle.Manage(d.Slots[s], device, s, actor).RevokeAll(now)
			for _, ev := range events(s, c) {
				ev.Detail = reason
				audit = append(audit, ev)
			}
			changes = append(changes, c...)
		}
		return audit, nil
	})
	var already *AlreadyRevokedError
	if errors.As(err, &already) {
		if e.closer != nil {
			if n := e.closer.Disconnect(device); n > 0 {
				e.log.Warn("sessions of a revoked device dropped again", "device", device, "actor", actor, "sessions_dropped", n)
			}
		}
		return 0, already
	} else if err != nil {
		return 0, fmt.Errorf("rotation: revoke %s: %w", device, err)
	}
	n := 0
	if e.closer != nil {
		n = e.closer.Disconnect(device)
	}
	took := time.Since(start)
	e.log.Warn("device revoked", "device", device, "actor", actor, "sessions_dropped", n, "took", took)
	e.emit(changes)
	return took, nil
}

// refusals rate-limits the audit records of refused attempts: every kind of
// refusal of a device is audited, but a device retrying in a loop adds one
// record per refusalEvery, not one per attempt.
type refusals struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const refusalEvery = time.Minute

func (r *refusals) due(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < refusalEvery && now.After(t) {
		return false
	}
	r.last[key] = now
	if len(r.last) > 100_000 { // bound the memory a flood of ids could take
		clear(r.last)
	}
	return true
}

// auditRefusal records that a revoked (or otherwise barred) device was
// refused at step. It never fails the caller: the refusal stands whether or
// not its record could be written.
func (e *Engine) auditRefusal(ctx context.Context, device, step, detail string) {
	if !e.refused.due(device+"/"+step, e.now()) {
		return
	}
	if err := e.st.Audit(ctx, store.Event{Action: "refused", Device: device, Actor: step, Detail: detail}); err != nil {
		e.log.Error("audit of a refusal failed", "device", device, "step", step, "err", err)
	}
}
