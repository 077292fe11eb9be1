package campaign

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Outcome is how one device's change stands.
type Outcome int

// Outcomes.
const (
	Open      Outcome = iota // requested, not finished
	Succeeded                // done: the device runs the new state
	Failed                   // ended without taking effect
)

// Kind is one kind of change a campaign makes. Implementations change
// desired state through the part that owns it and read outcomes from the
// durable device record only.
type Kind interface {
	// Start asks for the change on device and returns the version it
	// moves to. It must be idempotent: a change already open is returned,
	// never asked for again. The runner starts the devices of a step
	// concurrently, each device once: Start must be safe for that.
	Start(ctx context.Context, device, actor string) (uint32, error)
	// Requested returns the version of a change to d asked for at or after
	// since, or 0: how a campaign that stopped between asking and
	// recording finds what it asked for.
	Requested(d *store.Device, since time.Time) uint32
	// Outcome reads how the change to version stands on d, with a word
	// for a failure.
	Outcome(d *store.Device, version uint32) (Outcome, string)
	// Nudge sends a connected device the step of its open change again:
	// a downlink can be lost, or dropped by a device that did not yet
	// hold the key that signed it (right after fleetd restarted).
	Nudge(ctx context.Context, device string) error
	// GiveUp ends an open change the campaign counts as failed.
	GiveUp(ctx context.Context, device string, version uint32, actor, detail string) error
	// Rollback undoes what can be undone of an unfinished change and
	// reports whether it did; ErrNoRollback if the kind cannot.
	Rollback(ctx context.Context, device string, version uint32, actor string) (bool, error)
}

// Binder is a Kind whose steps depend on the campaign (firmware: the
// release it rolls out): the Service uses Bind(c) for campaign c.
type Binder interface {
	Bind(c *store.Campaign) Kind
}

// SpecChecker is a Kind that checks a campaign's spec before it is
// created (firmware: the release is staged and newer than the current).
type SpecChecker interface {
	CheckSpec(sp Spec) error
}

// Reverter is a Kind whose rollback undoes finished changes too, not only
// open ones (data key: the previous version primary again; firmware: the
// desired release back to the previous one), and which tells when a
// device rolled back runs a state the broker and engine accept again: the
// end of the recovery time (M10). A Kind that is no Reverter leaves
// finished devices alone and counts a rollback recovered at once (the
// identity kind: a cancelled rotation leaves the device on its active
// credential).
type Reverter interface {
	Recovered(d *store.Device, version uint32) bool
}

// SlotOf names the slot a kind changes, as the metrics label it
// (lifecycle.SlotKind).
func SlotOf(kind string) lifecycle.SlotKind {
	switch kind {
	case KindDataKey:
		return lifecycle.SlotData
	case KindFirmware:
		return lifecycle.SlotFirmware
	case KindIdentity:
		return lifecycle.SlotIdentity
	}
	return lifecycle.SlotKind(kind)
}

// ErrNoRollback: the kind only moves forward (anchors); abort instead.
var ErrNoRollback = errors.New("campaign: this kind has no rollback, abort it instead")

// Optional parts of a Kind.
type (
	// Preparer makes or records what a campaign of the kind rolls out,
	// when it is created, before it is stored (anchors: the next set,
	// from Spec.Roles; firmware: the fleet's release, which a rollback
	// goes back to, into c).
	Preparer interface {
		Prepare(ctx context.Context, c *store.Campaign, sp Spec, actor string) error
	}
	// Completer makes a kind's change fleet-wide when its campaign
	// completes (anchors: the set is published; firmware: the release
	// becomes the fleet's current one). It runs before the
	// campaign is recorded completed, and again if fleetd stopped in
	// between: it must be idempotent.
	Completer interface {
		Complete(ctx context.Context, c *store.Campaign, actor string) error
	}
	// ForwardOnly marks a kind whose campaigns are never rolled back,
	// whatever their devices' states: Rollback refuses them with
	// ErrNoRollback.
	ForwardOnly interface{ ForwardOnly() }
)

// Rotator is what the identity kind needs of the rotation engine.
type Rotator interface {
	RequestRotation(ctx context.Context, device, actor string) (rotation.Rotation, error)
	CancelRotation(ctx context.Context, device string, version uint32, actor, detail string) (bool, error)
	FailRotation(ctx context.Context, device string, version uint32, actor, detail string) (bool, error)
	Resend(ctx context.Context, device string) error
}

// Identity is the kind that rotates devices' identity credentials.
// Rollback cancels the rotations not yet activated (the broker never
// accepts their certificates, so the devices stay on their active
// credential); devices already activated keep their new, valid credential.
type Identity struct{ Engine Rotator }

// KindIdentity names Identity.
const KindIdentity = "identity"

// Start implements Kind.
func (k Identity) Start(ctx context.Context, device, actor string) (uint32, error) {
	r, err := k.Engine.RequestRotation(ctx, device, actor)
	if err != nil {
		return 0, err
	}
	return r.Version, nil
}

// Requested implements Kind.
func (k Identity) Requested(d *store.Device, since time.Time) uint32 {
	l := d.Slot(protocol.SlotIdentity).Latest()
	if l == nil || l.Reenrolled || l.RequestedAt.Before(since) {
		return 0
	}
	return l.Version
}

// Outcome implements Kind.
func (k Identity) Outcome(d *store.Device, version uint32) (Outcome, string) {
	v := d.Slot(protocol.SlotIdentity).Version(version)
	switch {
	case d.Revoked:
		return Failed, "device revoked"
	case v == nil:
		return Failed, fmt.Sprintf("version %d is gone", version)
	}
	switch v.State {
	case lifecycle.StatePending, lifecycle.StateIssued:
		return Open, ""
	case lifecycle.StateActive, lifecycle.StateSuperseded, lifecycle.StateRetired:
		return Succeeded, ""
	}
	return Failed, "version " + v.State.String()
}

// Nudge implements Kind: the engine resends the rotate or the certificate.
func (k Identity) Nudge(ctx context.Context, device string) error {
	return k.Engine.Resend(ctx, device)
}

// GiveUp implements Kind: the open rotation fails.
func (k Identity) GiveUp(ctx context.Context, device string, version uint32, actor, detail string) error {
	_, err := k.Engine.FailRotation(ctx, device, version, actor, detail)
	return err
}

// Rollback implements Kind: an open rotation is cancelled.
func (k Identity) Rollback(ctx context.Context, device string, version uint32, actor string) (bool, error) {
	return k.Engine.CancelRotation(ctx, device, version, actor, "campaign rollback")
}
