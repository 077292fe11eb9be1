package device

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/protocol"
)

// fileDataKeys holds the data keyset in datakey's binary encoding.
const fileDataKeys = "datakeys.bin"

// EventDataKey: a data-key version was stored (Version).
const EventDataKey EventKind = "data-key"

// DataKeys returns the stored data keyset (datakey encoding), or nil.
func (ks *Keystore) DataKeys() []byte {
	b, err := ks.st.ReadFile(fileDataKeys)
	if err != nil {
		return nil
	}
	return b
}

// SaveDataKeys stores the data keyset atomically.
func (ks *Keystore) SaveDataKeys(b []byte) error {
	if err := ks.write(fileDataKeys, b, 0o600); err != nil {
		return fmt.Errorf("device: save data keys: %w", err)
	}
	return nil
}

// loadDataKeys reads the stored data keyset; a device that never received
// a data key starts with an empty one.
func (a *Agent) loadDataKeys() error {
	a.keys = &datakey.Keyset{}
	if b := a.ks.DataKeys(); len(b) > 0 {
		if err := a.keys.UnmarshalBinary(b); err != nil {
			return fmt.Errorf("device: stored data keys: %w", err)
		}
	}
	return nil
}

// DataKeys returns a copy of the agent's data keyset.
func (a *Agent) DataKeys() *datakey.Keyset {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	return a.keys.Clone()
}

// heldKeys lists the data-key versions the agent can use and its
// primary, for hello.
func (a *Agent) heldKeys() (held []uint32, primary uint32) {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	for _, v := range a.keys.Versions() {
		if v.Status == datakey.Primary || v.Status == datakey.DecryptOnly {
			held = append(held, v.Version)
		}
	}
	return held, a.keys.PrimaryVersion()
}

// onKey opens a data key sealed to this device's identity key and adds it
// to the keyset. When that changes the primary (a new one, or an older
// one again after a rollback), a hello reports it: the server counts the
// change done only once the device says so.
func (a *Agent) onKey(ctx context.Context, m *protocol.Key) error {
	changed, err := a.storeKey(m)
	if err != nil || !changed {
		return err
	}
	return a.hello(ctx)
}

// storeKey opens and stores m, and reports whether the primary changed.
func (a *Agent) storeKey(m *protocol.Key) (bool, error) {
	if m.Slot != protocol.SlotData {
		return false, a.reject("unknown-slot", fmt.Errorf("key for slot %v", m.Slot))
	}
	st := a.ks.State()
	var raw []byte
	var err error
	for _, v := range []uint32{st.Active, st.Pending, st.Previous} {
		if v == 0 {
			continue
		}
		k, kerr := a.ks.Key(v)
		if errors.Is(kerr, ErrKeyInHardware) {
			// Opening a data key takes ECDH with the identity key, which
			// tpm2-pkcs11 does not offer (no CKM_ECDH1_DERIVE): say so
			// rather than report a wrong recipient.
			err = fmt.Errorf("identity v%d: %w: data keys need a software identity key", v, kerr)
			continue
		}
		if kerr != nil {
			continue
		}
		raw, err = protocol.OpenEncrypt0(k, m.Sealed, a.ks.ID().ID)
		if !errors.Is(err, protocol.ErrWrongRecipient) {
			break
		}
	}
	if err != nil || raw == nil {
		return false, a.reject("data-key", fmt.Errorf("v%d: %w", m.Version, err))
	}
	defer clear(raw)
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	ks := a.keys.Clone()
	before := ks.PrimaryVersion()
	have := slices.ContainsFunc(ks.Versions(), func(v datakey.VersionInfo) bool { return v.Version == m.Version })
	switch {
	case have && m.Status == protocol.KeyStatusPrimary:
		err = ks.SetPrimary(m.Version)
	case have:
		return false, nil // a repeat
	case m.Status == protocol.KeyStatusPrimary:
		if err = ks.Add(m.Version, raw); err == nil && ks.PrimaryVersion() != m.Version {
			err = ks.SetPrimary(m.Version)
		}
	default:
		err = ks.Add(m.Version, raw)
	}
	if err != nil {
		return false, a.reject("data-key", fmt.Errorf("v%d: %w", m.Version, err))
	}
	b, err := ks.MarshalBinary()
	if err != nil {
		return false, err
	}
	if err := a.ks.SaveDataKeys(b); err != nil {
		return false, err
	}
	a.keys = ks
	a.emit(EventDataKey, m.Version, "")
	return ks.PrimaryVersion() != before, nil
}

// retireDataKey drops a data-key version the server retired.
func (a *Agent) retireDataKey(v uint32) error {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	ks := a.keys.Clone()
	if err := ks.Retire(v); err != nil {
		return a.reject("data-key", fmt.Errorf("retire v%d: %w", v, err))
	}
	b, err := ks.MarshalBinary()
	if err != nil {
		return err
	}
	if err := a.ks.SaveDataKeys(b); err != nil {
		return err
	}
	a.keys = ks
	a.emit(EventRetired, v, "data")
	return nil
}
