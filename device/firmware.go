package device

import (
	"context"
	"errors"
	"fmt"

	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/protocol"
)

// Event kinds of firmware updates.
const (
	EventFirmware EventKind = "firmware" // a firmware version confirmed after its boot check (Version)
	EventRollback EventKind = "rollback" // a firmware version failed its boot check (Version; Detail: why)
)

// FirmwareOptions turns on firmware updates in an agent.
type FirmwareOptions struct {
	// Dir holds the two firmware slots (package firmware).
	Dir string
	// Identity is the device's vendor and class and its factory version.
	Identity firmware.Identity
	// Fetch returns the image a manifest names; required.
	Fetch func(ctx context.Context, uri string) ([]byte, error)
	// BootCheck decides whether a freshly installed image booted well
	// (a real device: the new firmware's self-test); nil accepts.
	BootCheck func(m *firmware.Manifest, image []byte) error
}

// openFirmware opens the firmware slots when Options.Firmware turns
// firmware updates on; without it the agent ignores firmware offers.
func (a *Agent) openFirmware() error {
	f := a.opts.Firmware
	if f == nil {
		return nil
	}
	if f.Fetch == nil {
		return errors.New("device: firmware updates need a Fetch function")
	}
	s, err := firmware.OpenSlots(f.Dir, f.Identity)
	if err != nil {
		return err
	}
	a.fw = s
	return nil
}

// FirmwareVersion returns the version of the firmware running (0 without
// firmware support).
func (a *Agent) FirmwareVersion() uint32 {
	if a.fw == nil {
		return 0
	}
	return a.fw.Running()
}

// onFirmware verifies a manifest against the current anchors' firmware
// key, fetches and installs the image into the inactive slot, boots it and
// confirms it or rolls back, then reports.
func (a *Agent) onFirmware(ctx context.Context, m *protocol.Firmware) error {
	if a.fw == nil {
		a.log.Debug("firmware offer ignored: this agent takes no firmware updates")
		return nil
	}
	cur := a.anchors.Load()
	if cur == nil {
		return a.reject("firmware", errors.New("no anchors to check a manifest against"))
	}
	key, err := cur.FirmwarePublicKey()
	if err != nil {
		return err
	}
	man, err := firmware.Verify(m.Manifest, key)
	if err != nil {
		return a.reject("firmware", err)
	}
	if man.Version <= a.fw.Running() || a.fw.Failed(man.Version) {
		return nil // have it, or it failed here before
	}
	img, err := a.opts.Firmware.Fetch(ctx, man.URI)
	if err != nil {
		a.log.Warn("firmware image not fetched; will retry at the next offer", "version", man.Version, "err", err)
		return nil
	}
	if err := a.fw.Install(m.Manifest, key, img); err != nil {
		return a.reject("firmware", err)
	}
	check := a.opts.Firmware.BootCheck
	if check == nil {
		check = func(*firmware.Manifest, []byte) error { return nil }
	}
	res, err := a.fw.Boot(check)
	if err != nil {
		return err
	}
	if res.Outcome == firmware.OutcomeConfirmed {
		a.log.Info("firmware updated", "version", res.Running)
		a.emit(EventFirmware, res.Running, "")
	} else {
		a.log.Warn("firmware rolled back", "version", res.Tried, "running", res.Running, "err", res.Reason)
		a.emit(EventRollback, res.Tried, fmt.Sprint(res.Reason))
	}
	return a.hello(ctx)
}
