package campaign

import (
	"context"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// KindAnchors names Anchors.
const KindAnchors = "anchors"

// AnchorRollout is what the anchors kind needs of fleetd's trust
// (*trust.Service): a set prepared but not published, handed to one
// device at a time, published fleet-wide when the campaign completes.
type AnchorRollout interface {
	// Prepare makes the next set replacing the keys of roles, or returns
	// the one prepared already; it returns its version.
	Prepare(ctx context.Context, roles []string, actor string) (uint32, error)
	// Deliver sends device the sets from have to the newest one (the
	// prepared set; the published one once the roll-out is published),
	// and the delegation it then verifies downlinks with; it returns the
	// newest version.
	Deliver(ctx context.Context, device string, have uint32) (uint32, error)
	// Publish makes every set up to version the fleet's; idempotent.
	Publish(ctx context.Context, version uint32, actor string) error
}

// Anchors is the kind that rolls out the next trust-anchor set in stages.
// The set is prepared when the campaign is created and handed to each
// device of a stage on its own down topic; a device succeeds when it
// reports holding it (its hello names the anchors version). The fleet-wide
// switch (the chain on the anchors topics, the CA, fleetd's certificate,
// the online key under the new update key) happens when the campaign
// completes. The chain only moves forward: there is no rollback, only
// abort, after which devices given the set keep it and are served under
// it, and the others stay on the published set; a later anchors campaign
// rolls out the same prepared set.
type Anchors struct {
	Trust   AnchorRollout
	Devices interface {
		GetDevice(ctx context.Context, id string) (*store.Device, error)
	}
}

// Prepare implements Preparer: the set the campaign rolls out.
func (k Anchors) Prepare(ctx context.Context, _ *store.Campaign, sp Spec, actor string) error {
	_, err := k.Trust.Prepare(ctx, sp.Roles, actor)
	return err
}

// Start implements Kind: the prepared set is sent to the device. Sending
// it again is harmless (a device that walked to it ignores it), so Start
// is idempotent.
func (k Anchors) Start(ctx context.Context, device, actor string) (uint32, error) {
	d, err := k.Devices.GetDevice(ctx, device)
	if err != nil {
		return 0, err
	}
	return k.Trust.Deliver(ctx, device, d.Anchors)
}

// Requested implements Kind: nothing is recorded per device before the
// set is sent, and sending it twice is harmless, so a restart just sends
// it again.
func (k Anchors) Requested(*store.Device, time.Time) uint32 { return 0 }

// Outcome implements Kind: done once the device reports holding the set
// (or a later one).
func (k Anchors) Outcome(d *store.Device, version uint32) (Outcome, string) {
	switch {
	case d.Anchors >= version:
		return Succeeded, ""
	case d.Revoked:
		return Failed, "device revoked"
	}
	return Open, ""
}

// Nudge implements Kind: the sets the device lacks are sent again, from
// the version it last reported.
func (k Anchors) Nudge(ctx context.Context, device string) error {
	_, err := k.Start(ctx, device, "")
	return err
}

// GiveUp implements Kind: nothing to undo; the device keeps the set it
// holds and is still served under it.
func (k Anchors) GiveUp(context.Context, string, uint32, string, string) error { return nil }

// Rollback implements Kind: refused, the chain only moves forward.
func (k Anchors) Rollback(context.Context, string, uint32, string) (bool, error) {
	return false, ErrNoRollback
}

// ForwardOnly implements ForwardOnly.
func (k Anchors) ForwardOnly() {}

// Complete implements Completer: the set the campaign rolled out becomes
// the fleet's.
func (k Anchors) Complete(ctx context.Context, c *store.Campaign, actor string) error {
	var v uint32
	for _, d := range c.Devices {
		v = max(v, d.Version)
	}
	if v == 0 {
		return nil // nobody was given a set: nothing to publish
	}
	if err := k.Trust.Publish(ctx, v, actor); err != nil {
		return fmt.Errorf("campaign: publish anchors v%d: %w", v, err)
	}
	return nil
}
