package campaign

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// KindFirmware names Firmware.
const KindFirmware = "firmware"

// FirmwareReleases is what the firmware kind needs of the releases;
// *release.Releases satisfies it.
type FirmwareReleases interface {
	// CurrentFirmware is the fleet's current release (0: none).
	CurrentFirmware() (uint32, []byte)
	// Known reports whether v is the current or a staged release.
	Known(v uint32) bool
	// Promote makes staged release v the fleet's current one.
	Promote(ctx context.Context, v uint32, actor string) error
	// Revert makes (once) the rollback release from bad back to good's
	// image, under a new sequence number.
	Revert(ctx context.Context, bad, good uint32, actor string) (uint32, error)
	// Reverted reports whether running is a release a rollback release
	// takes devices back from.
	Reverted(running uint32) bool
}

// FirmwarePinner sets the release one device should run and offers it;
// the rotation engine satisfies it.
type FirmwarePinner interface {
	PinFirmware(ctx context.Context, device string, version uint32, actor, detail string) (bool, error)
	PushFirmware(ctx context.Context, device string) error
}

// Firmware is the kind that rolls a staged release out: each device of a
// stage is pinned to the release (its desired release, durable in its
// record), which the engine offers it; the change is done when the device
// reports running it; when the campaign completes the release becomes the
// fleet's current one.
//
// Rollback unpins the campaign's devices, finished ones included (it is a
// Reverter), so their desired release is the fleet's current one again.
// Devices refuse a manifest whose sequence number is not above the one
// they run (SUIT's anti-rollback rule), so those that installed the new
// release cannot be sent the old manifest: they get a rollback release,
// the current release's image signed under a new sequence number, which
// they accept and which the engine offers every device running the
// reverted release.
type Firmware struct {
	Releases FirmwareReleases
	Engine   FirmwarePinner
	// Release is the campaign's release and Previous the fleet's release
	// when it began (Bind sets them).
	Release, Previous uint32
}

// Bind implements Binder: the kind for campaign c's release.
func (k Firmware) Bind(c *store.Campaign) Kind {
	k.Release, k.Previous = c.Release, c.Previous
	return k
}

// Prepare implements Preparer: the campaign remembers the fleet's
// release, the one a rollback goes back to.
func (k Firmware) Prepare(_ context.Context, c *store.Campaign, _ Spec, _ string) error {
	c.Previous, _ = k.Releases.CurrentFirmware()
	return nil
}

// CheckSpec implements SpecChecker: the campaign names a staged release
// newer than the current one.
func (k Firmware) CheckSpec(sp Spec) error {
	cur, _ := k.Releases.CurrentFirmware()
	switch {
	case sp.Release == 0:
		return invalid("a firmware campaign needs a release (publish it with --staged first)")
	case !k.Releases.Known(sp.Release):
		return invalid("release %d is not published", sp.Release)
	case sp.Release <= cur:
		return invalid("release %d is not newer than the current %d", sp.Release, cur)
	}
	return nil
}

var errUnbound = errors.New("campaign: firmware kind without a release")

// Start implements Kind: the device is pinned to the release, which is
// offered to it at once if it is connected.
func (k Firmware) Start(ctx context.Context, device, actor string) (uint32, error) {
	if k.Release == 0 {
		return 0, errUnbound
	}
	if _, err := k.Engine.PinFirmware(ctx, device, k.Release, actor, "firmware campaign"); err != nil {
		return 0, err
	}
	return k.Release, nil
}

// Requested implements Kind: the device is pinned to the release. The
// pin is not timed, and one pinned by an earlier campaign of the same
// release is as good as asked.
func (k Firmware) Requested(d *store.Device, _ time.Time) uint32 {
	if k.Release != 0 && d.FirmwarePin == k.Release {
		return k.Release
	}
	return 0
}

// Outcome implements Kind: succeeded once the device reports running the
// release or a later one; failed once it is no longer pinned to it.
func (k Firmware) Outcome(d *store.Device, version uint32) (Outcome, string) {
	switch {
	case d.Revoked:
		return Failed, "device revoked"
	case d.Firmware >= version:
		return Succeeded, ""
	case d.FirmwarePin != version:
		return Failed, fmt.Sprintf("no longer pinned to release %d", version)
	}
	return Open, ""
}

// Nudge implements Kind: the engine offers the release again.
func (k Firmware) Nudge(ctx context.Context, device string) error {
	return k.Engine.PushFirmware(ctx, device)
}

// GiveUp implements Kind: the device is unpinned; its desired release is
// the fleet's current one again.
func (k Firmware) GiveUp(ctx context.Context, device string, version uint32, actor, detail string) error {
	_, err := k.Engine.PinFirmware(ctx, device, 0, actor, detail)
	return err
}

// Rollback implements Kind: the device is unpinned, and the rollback
// release from version back to the previous release's image exists
// before, so that a device that installed version (or installs it now,
// its offer already on the way) is offered it. If the campaign had
// completed, version is the fleet's release: the rollback release becomes
// the fleet's instead, so that no device still behind is offered version.
func (k Firmware) Rollback(ctx context.Context, device string, version uint32, actor string) (bool, error) {
	if k.Previous != 0 && k.Previous < version {
		back, err := k.Releases.Revert(ctx, version, k.Previous, actor)
		if err != nil {
			return false, err
		}
		if cur, _ := k.Releases.CurrentFirmware(); cur == version {
			if err := k.Releases.Promote(ctx, back, actor); err != nil {
				return false, err
			}
		}
	}
	// Unpinning offers a connected device its desired release at once.
	if _, err := k.Engine.PinFirmware(ctx, device, 0, actor, "campaign rollback"); err != nil {
		return false, err
	}
	return true, nil
}

// Recovered implements Reverter: the device runs neither the release
// rolled back nor any other one a rollback release reverts.
func (k Firmware) Recovered(d *store.Device, version uint32) bool {
	return d.Firmware != version && !k.Releases.Reverted(d.Firmware)
}

// Complete implements Completer: the release becomes the fleet's current
// one.
func (k Firmware) Complete(ctx context.Context, _ *store.Campaign, actor string) error {
	if k.Release == 0 {
		return errUnbound
	}
	return k.Releases.Promote(ctx, k.Release, actor)
}
