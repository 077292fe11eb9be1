package escrow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// ErrRevoked: the device is revoked and gets no new data key.
var ErrRevoked = errors.New("escrow: device revoked")

// RevertDataKey rolls back a device's data-key rotation to version: if
// version is still the device's primary, the version before it is primary
// again and version becomes decrypt-only, so that whatever the device
// encrypted with it stays readable. The change is durable and audited
// (data-key-reverted, with detail) and pushed to the device if it is
// connected; the others get it at their next hello, which reports the
// primary they encrypt with. It reports whether version stands reverted:
// true as well when it was reverted before (a rollback retried after an
// error elsewhere), false when it was rotated past or when no earlier
// version with its key is left to go back to.
//
// The changes reported (the older version superseded -> active, the newer
// active -> superseded) are not moves of lifecycle.Legal, on purpose: that
// life cycle is the identity credential's, which never goes back (a
// superseded certificate is never active again). A data key has no such
// rule: it is symmetric, never seen by the broker, and its older versions
// are kept for decryption precisely so that one can be primary again.
func (e *Escrow) RevertDataKey(ctx context.Context, device string, version uint32, actor, detail string) (bool, error) {
	var changes []lifecycle.Change
	before := false
	_, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changes, before = changes[:0], false
		k := d.DataKey(version)
		if k == nil || k.Status != store.DataKeyPrimary {
			before = k != nil && k.Status == store.DataKeyDecryptOnly && primaryBelow(d, version)
			return nil, store.ErrNoChange
		}
		var prev *store.DataKey
		for _, p := range d.DataKeys {
			live := p.Status == store.DataKeyDecryptOnly || p.Status == store.DataKeyRetired
			if p.Version < version && live && len(p.Wrapped) > 0 {
				prev = p
			}
		}
		if prev == nil {
			return nil, store.ErrNoChange
		}
		if c, ok := dataKeyChange(device, prev.Version, prev.Status, store.DataKeyPrimary, actor); ok {
			changes = append(changes, c)
		}
		if c, ok := dataKeyChange(device, version, k.Status, store.DataKeyDecryptOnly, actor); ok {
			changes = append(changes, c)
		}
		prev.Status, prev.RetiredAt = store.DataKeyPrimary, time.Time{}
		k.Status = store.DataKeyDecryptOnly
		return []store.Event{{Action: "data-key-reverted", Device: device, Slot: uint8(protocol.SlotData), Version: prev.Version,
			Actor: actor, Detail: fmt.Sprintf("v%d primary again, v%d decrypt-only: %s", prev.Version, version, detail)}}, nil
	})
	if err != nil && !errors.Is(err, store.ErrNoChange) {
		return false, fmt.Errorf("escrow: revert %s v%d: %w", device, version, err)
	}
	if err != nil || len(changes) == 0 {
		return before, nil
	}
	e.report(changes)
	e.push(ctx, device)
	return true, nil
}

// primaryBelow reports whether d's primary data key is older than version.
func primaryBelow(d *store.Device, version uint32) bool {
	for _, k := range d.DataKeys {
		if k.Status == store.DataKeyPrimary {
			return k.Version < version
		}
	}
	return false
}
