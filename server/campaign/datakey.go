package campaign

import (
	"context"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// KindDataKey names DataKey.
const KindDataKey = "data-key"

// DataKeyEscrow is what the data-key kind needs of the escrow, which owns
// the devices' data keys; *escrow.Escrow satisfies it.
type DataKeyEscrow interface {
	RotateDataKey(ctx context.Context, device, actor string) (uint32, error)
	RevertDataKey(ctx context.Context, device string, version uint32, actor, detail string) (bool, error)
}

// DataKeyPusher delivers a connected device's data keys again; the
// rotation engine satisfies it.
type DataKeyPusher interface {
	PushDataKeys(ctx context.Context, device string) error
}

// DataKey is the kind that rotates devices' data keys one device at a
// time: a new primary version in the escrow, pushed to the device, done
// once the device reports it as the primary it encrypts with. Giving up
// and rolling back both make the version before it primary again (the
// new one stays decrypt-only, so what the device wrote with it stays
// readable), finished devices included: it is a Reverter.
type DataKey struct {
	Escrow DataKeyEscrow
	Engine DataKeyPusher
}

// Start implements Kind: the escrow makes, stores, audits and pushes the
// new primary.
func (k DataKey) Start(ctx context.Context, device, actor string) (uint32, error) {
	return k.Escrow.RotateDataKey(ctx, device, actor)
}

// Requested implements Kind: the newest version, if it is primary and was
// made at or after since.
func (k DataKey) Requested(d *store.Device, since time.Time) uint32 {
	if len(d.DataKeys) == 0 {
		return 0
	}
	l := d.DataKeys[len(d.DataKeys)-1]
	if l.Status != store.DataKeyPrimary || l.CreatedAt.Before(since) {
		return 0
	}
	return l.Version
}

// Outcome implements Kind: succeeded once the device reports version (or
// a later one) as its primary; failed when version is no longer the
// escrow's primary and the device never reported it.
func (k DataKey) Outcome(d *store.Device, version uint32) (Outcome, string) {
	v := d.DataKey(version)
	switch {
	case d.Revoked:
		return Failed, "device revoked"
	case v == nil:
		return Failed, fmt.Sprintf("data key v%d is gone", version)
	case d.DataPrimary >= version:
		return Succeeded, ""
	case v.Status != store.DataKeyPrimary:
		return Failed, fmt.Sprintf("data key v%d is %v", version, v.Status)
	}
	return Open, ""
}

// Nudge implements Kind: the engine sends the primary again.
func (k DataKey) Nudge(ctx context.Context, device string) error {
	return k.Engine.PushDataKeys(ctx, device)
}

// GiveUp implements Kind: the version before is primary again, so the
// escrow's primary is one the device holds.
func (k DataKey) GiveUp(ctx context.Context, device string, version uint32, actor, detail string) error {
	_, err := k.Escrow.RevertDataKey(ctx, device, version, actor, detail)
	return err
}

// Rollback implements Kind: the version before is primary again.
func (k DataKey) Rollback(ctx context.Context, device string, version uint32, actor string) (bool, error) {
	return k.Escrow.RevertDataKey(ctx, device, version, actor, "campaign rollback")
}

// Recovered implements Reverter: the device reports the escrow's primary
// as its own again.
func (k DataKey) Recovered(d *store.Device, version uint32) bool {
	for _, dk := range d.DataKeys {
		if dk.Status == store.DataKeyPrimary {
			return d.DataPrimary == dk.Version
		}
	}
	return true // no primary left to encrypt with: nothing to wait for
}
