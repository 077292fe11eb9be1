package escrow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// rotateWorkers bounds concurrent device updates in Rotate: enough for the
// store's group commits to fill, few enough for the HSM's sessions.
const rotateWorkers = 16

// Result reports a Rotate.
type Result struct {
	Rotated []string // devices that got a new version
	Failed  map[string]error
}

// RotateDataKeys is the operator's fleet-wide data-key rotation: Rotate,
// with every new key pushed at once to its device if it is connected (the
// others get theirs at their next hello).
func (e *Escrow) RotateDataKeys(ctx context.Context, actor string) (Result, error) {
	return e.Rotate(ctx, actor, func(device string) { e.push(ctx, device) })
}

// RotateDataKey gives one device a new primary data key, durable and
// audited, pushes it if the device is connected and returns its version:
// the step a data-key campaign takes per device.
func (e *Escrow) RotateDataKey(ctx context.Context, device, actor string) (uint32, error) {
	v, err := e.rotateOne(ctx, device, actor)
	if err != nil {
		return 0, err
	}
	e.push(ctx, device)
	return v, nil
}

// push delivers device's keys at once if it is connected.
func (e *Escrow) push(ctx context.Context, device string) {
	h := e.getHooks()
	if h.Push == nil {
		return
	}
	if err := h.Push.PushDataKeys(ctx, device); err != nil {
		h.Logger.Debug("data key not pushed; the device gets it at its next hello", "device", device, "err", err)
	}
}

// Rotate gives every device that is not revoked a new primary data key and
// moves the older versions along their life cycle. Each device is one
// durable, audited update; after it, onRotated (if set) is called so the
// caller can push the key to the device at once.
func (e *Escrow) Rotate(ctx context.Context, actor string, onRotated func(device string)) (Result, error) {
	var ids []string
	if err := e.st.ForEachDevice(ctx, func(d *store.Device) error {
		if !d.Revoked {
			ids = append(ids, d.ID)
		}
		return nil
	}); err != nil {
		return Result{}, fmt.Errorf("escrow: list devices: %w", err)
	}
	res := Result{Failed: map[string]error{}}
	var mu sync.Mutex
	sem := make(chan struct{}, rotateWorkers)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := e.rotateOne(ctx, id, actor)
			mu.Lock()
			if errors.Is(err, ErrRevoked) { // revoked since it was listed
				err = nil
			}
			if err != nil {
				res.Failed[id] = err
			} else {
				res.Rotated = append(res.Rotated, id)
			}
			mu.Unlock()
			if err == nil && onRotated != nil {
				onRotated(id)
			}
		}()
	}
	wg.Wait()
	return res, nil
}

// rotateOne gives device id a new primary version and returns it.
func (e *Escrow) rotateOne(ctx context.Context, id, actor string) (uint32, error) {
	// The key is made and wrapped before the transaction, which may run
	// more than once; a retried transaction reuses it.
	key, wrapped, err := e.hsm.NewDataKey(KEKLabel, KeySize)
	if err != nil {
		return 0, fmt.Errorf("escrow: new data key for %s: %w", id, err)
	}
	clear(key) // only the escrowed copy is kept; delivery unwraps it again
	now := e.now()
	var changes []lifecycle.Change
	var version uint32
	_, err = e.st.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
		if d.Revoked {
			return nil, ErrRevoked
		}
		before := map[uint32]store.DataKeyStatus{}
		for _, k := range d.DataKeys {
			before[k.Version] = k.Status
		}
		events := Advance(d, wrapped, KEKLabel, e.policy.Current(), now, actor)
		version = d.DataKeys[len(d.DataKeys)-1].Version
		changes = changes[:0]
		for _, k := range d.DataKeys {
			if from, ok := before[k.Version]; !ok || from != k.Status {
				if c, ok := dataKeyChange(id, k.Version, from, k.Status, actor); ok {
					changes = append(changes, c)
				}
			}
		}
		return events, nil
	})
	if err != nil {
		return 0, fmt.Errorf("escrow: rotate %s: %w", id, err)
	}
	e.report(changes)
	return version, nil
}

func (e *Escrow) report(changes []lifecycle.Change) {
	if fn := e.getHooks().OnChange; fn != nil {
		for _, c := range changes {
			fn(c)
		}
	}
}

// dataKeyState maps a data key's status to the life-cycle word it is
// reported with. A destroyed version has none: it was retired before, and
// destroying it only wipes the escrowed copy.
func dataKeyState(s store.DataKeyStatus) lifecycle.State {
	switch s {
	case store.DataKeyPrimary:
		return lifecycle.StateActive
	case store.DataKeyDecryptOnly:
		return lifecycle.StateSuperseded
	case store.DataKeyRetired:
		return lifecycle.StateRetired
	}
	return lifecycle.StateUnknown
}

func dataKeyChange(device string, version uint32, from, to store.DataKeyStatus, actor string) (lifecycle.Change, bool) {
	t := dataKeyState(to)
	if t == lifecycle.StateUnknown {
		return lifecycle.Change{}, false
	}
	return lifecycle.Change{Device: device, Slot: lifecycle.SlotData, Version: version,
		From: dataKeyState(from), To: t, Actor: actor}, true
}

// Advance adds a new primary version with the given wrapped key to d and
// moves the others along: primary -> decrypt-only -> retired (beyond
// pol.DataKeysDecrypt) -> destroyed (pol.DataKeyDestroyAfter after
// retirement). It returns the audit events. Pure, for table tests.
func Advance(d *store.Device, wrapped []byte, kek string, pol policy.Policy, now time.Time, actor string) []store.Event {
	next := uint32(1)
	if n := len(d.DataKeys); n > 0 {
		next = d.DataKeys[n-1].Version + 1
	}
	ev := func(action string, v uint32) store.Event {
		return store.Event{Action: action, Device: d.ID, Slot: uint8(protocol.SlotData), Version: v, Actor: actor}
	}
	var events []store.Event
	for _, k := range d.DataKeys {
		if k.Status == store.DataKeyPrimary {
			k.Status = store.DataKeyDecryptOnly
		}
	}
	d.DataKeys = append(d.DataKeys, &store.DataKey{Version: next, Status: store.DataKeyPrimary, Wrapped: wrapped, KEK: kek, CreatedAt: now})
	events = append(events, ev("data-key-created", next))
	live := 0
	for i := len(d.DataKeys) - 1; i >= 0; i-- {
		k := d.DataKeys[i]
		switch k.Status {
		case store.DataKeyPrimary:
		case store.DataKeyDecryptOnly:
			live++
			if live > pol.DataKeysDecrypt {
				k.Status, k.RetiredAt = store.DataKeyRetired, now
				events = append(events, ev("data-key-retired", k.Version))
			}
		case store.DataKeyRetired:
			if now.Sub(k.RetiredAt) >= pol.DataKeyDestroyAfter.D() {
				k.Status, k.Wrapped = store.DataKeyDestroyed, nil
				events = append(events, ev("data-key-destroyed", k.Version))
			}
		}
	}
	return events
}
