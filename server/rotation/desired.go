package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// The parts of a device's desired state beyond its identity: trust anchors,
// data keys and firmware. Each is sent in answer to a hello that reports
// less than the server wants, so a device that was away for a year gets
// every step it missed, in order, with no operator action.

// sendAnchors sends the anchor sets that follow version have, at most
// protocol.MaxChainSets of them: a device further behind reports the
// version it reached and gets the next ones.
func (e *Engine) sendAnchors(ctx context.Context, device, topic string, have uint32) error {
	if e.opts.Anchors == nil || have >= e.opts.Anchors.AnchorVersion() {
		return nil
	}
	sets := e.opts.Anchors.SetsAfter(have, protocol.MaxChainSets)
	if len(sets) == 0 {
		return nil
	}
	m := protocol.Stamp(&protocol.Anchors{Sets: sets}, e.now(), 0)
	m.IAT = 0 // the sets date themselves
	b, err := e.codec.Bare(m)
	if err != nil {
		return err
	}
	e.stats.AnchorsSent.Add(1)
	return e.publish(ctx, topic, b)
}

// sendDataKeys seals to the device's key kv every data-key version it
// should hold and does not report, the primary again if the device
// reports another primary (primary; 0: not reported), and retires those
// it holds and should not.
func (e *Engine) sendDataKeys(ctx context.Context, d *store.Device, kv *store.KeyVersion, held []uint32, primary uint32) error {
	if e.opts.DataKeys == nil {
		return nil
	}
	if d.Revoked {
		e.auditRefusal(ctx, d.ID, "data-keys", "device revoked")
		return reject(ReasonRevoked, "device %s is revoked", d.ID)
	}
	var pub *ecdsa.PublicKey
	// New versions first, retirements after: a device must never be asked
	// to drop its primary before it has the one that replaces it.
	for _, k := range d.DataKeys {
		live := k.Status == store.DataKeyPrimary || k.Status == store.DataKeyDecryptOnly
		// A device that holds our primary but encrypts with another
		// (a rollback made an older version primary again) gets it again
		// as primary, which it then makes its own.
		again := k.Status == store.DataKeyPrimary && primary != 0 && primary != k.Version
		if !live || (slices.Contains(held, k.Version) && !again) {
			continue
		}
		if pub == nil {
			c, err := x509.ParseCertificate(kv.Cert)
			if err != nil {
				return fmt.Errorf("rotation: certificate of %s v%d: %w", d.ID, kv.Version, err)
			}
			p, ok := c.PublicKey.(*ecdsa.PublicKey)
			if !ok {
				return fmt.Errorf("rotation: %s v%d: identity key is not ECDSA", d.ID, kv.Version)
			}
			pub = p
		}
		if err := e.sendDataKey(ctx, d.ID, pub, k); err != nil {
			return err
		}
	}
	for _, k := range d.DataKeys {
		live := k.Status == store.DataKeyPrimary || k.Status == store.DataKeyDecryptOnly
		if !live && slices.Contains(held, k.Version) {
			if err := e.sendRetire(ctx, d.ID, protocol.SlotData, k.Version); err != nil {
				return err
			}
		}
	}
	for _, v := range held {
		if d.DataKey(v) == nil { // never ours, or pruned: drop it
			if err := e.sendRetire(ctx, d.ID, protocol.SlotData, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *Engine) sendDataKey(ctx context.Context, device string, pub *ecdsa.PublicKey, k *store.DataKey) error {
	raw, err := e.opts.DataKeys.UnwrapDataKey(ctx, k)
	if err != nil {
		return fmt.Errorf("rotation: data key %s v%d: %w", device, k.Version, err)
	}
	sealed, err := protocol.SealEncrypt0(pub, raw, device)
	clear(raw)
	if err != nil {
		return fmt.Errorf("rotation: seal data key %s v%d: %w", device, k.Version, err)
	}
	status := protocol.KeyStatusDecryptOnly
	if k.Status == store.DataKeyPrimary {
		status = protocol.KeyStatusPrimary
	}
	m := protocol.Stamp(&protocol.Key{Slot: protocol.SlotData, Version: k.Version, Status: status, Sealed: sealed},
		e.now(), e.opts.CommandTTL)
	b, err := e.seal(m, device)
	if err != nil {
		return err
	}
	e.stats.DataKeysSent.Add(1)
	e.log.Info("data key sent", "device", device, "slot", "data", "version", k.Version, "status", k.Status.String())
	return e.send(ctx, device, b)
}

// PushDataKeys sends a connected device the data-key versions it is
// likely missing after a data-key rotation or its rollback: the primary,
// and a retire for every retired version. A device that is offline gets
// them in answer to its next hello.
func (e *Engine) PushDataKeys(ctx context.Context, device string) error {
	d, err := e.st.GetDevice(ctx, device)
	if err != nil {
		return err
	}
	kv := d.Slot(credentialSlot).Active()
	if kv == nil || d.Revoked {
		return nil
	}
	var held []uint32
	for _, k := range d.DataKeys {
		if k.Status != store.DataKeyPrimary {
			held = append(held, k.Version) // assume it has all but the new primary
		}
	}
	return e.sendDataKeys(ctx, d, kv, held, 0)
}

// PushFirmware offers a connected device the release it should run, if
// it reported running an older one: what a firmware campaign sends when
// it pins a device to a staged release, or moves its pin back.
func (e *Engine) PushFirmware(ctx context.Context, device string) error {
	d, err := e.st.GetDevice(ctx, device)
	if err != nil {
		return err
	}
	if d.Revoked {
		return nil
	}
	return e.sendFirmware(ctx, d, d.Firmware)
}

// sendFirmware offers the release d should run (the fleet's current one,
// or the staged one d is pinned to) to a device that runs an older
// version. A device that reports no firmware version takes no firmware
// updates.
func (e *Engine) sendFirmware(ctx context.Context, d *store.Device, running uint32) error {
	if e.opts.Firmware == nil {
		return nil
	}
	v, manifest := e.opts.Firmware.FirmwareFor(d.FirmwarePin, running)
	if v == 0 || running == 0 || v <= running {
		return nil // no release, a device that takes no firmware, or up to date
	}
	m := protocol.Stamp(&protocol.Firmware{Manifest: manifest}, e.now(), 0)
	m.IAT = 0
	b, err := e.codec.Bare(m)
	if err != nil {
		return err
	}
	e.stats.FirmwareSent.Add(1)
	return e.send(ctx, d.ID, b)
}

// PinFirmware sets the release device should run while a firmware
// campaign stages one (0: back to the fleet's current release), durable
// and audited firmware-pinned, and offers it at once if the device is
// connected and behind. It reports whether the pin changed.
func (e *Engine) PinFirmware(ctx context.Context, device string, version uint32, actor, detail string) (bool, error) {
	changed := false
	d, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changed = false
		if d.Revoked {
			return nil, ErrRevoked
		}
		if d.FirmwarePin == version {
			return nil, store.ErrNoChange
		}
		changed, d.FirmwarePin = true, version
		return []store.Event{{Action: "firmware-pinned", Device: device, Version: version, Actor: actor, Detail: detail}}, nil
	})
	if err != nil && !errors.Is(err, store.ErrNoChange) {
		return false, fmt.Errorf("rotation: pin firmware of %s: %w", device, err)
	}
	if d != nil && d.Firmware != 0 {
		if err := e.sendFirmware(ctx, d, d.Firmware); err != nil {
			e.log.Debug("firmware not offered; the device gets it at its next hello", "device", device, "err", err)
		}
	}
	return changed, nil
}
