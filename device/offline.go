package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
)

// Event kinds of the offline-device features.
const (
	EventAnchors     EventKind = "anchors"       // walked to a newer anchor set (Version)
	EventDataKey     EventKind = "data-key"      // a data-key version stored (Version)
	EventFirmware    EventKind = "firmware"      // a firmware version confirmed after its boot check (Version)
	EventRollback    EventKind = "rollback"      // a firmware version failed its boot check (Version; Detail: why)
	EventReenrolling EventKind = "reenrolling"   // connected with the birth credential to re-enrol
	EventReenrolled  EventKind = "reenrolled"    // a certificate for a new identity came back (Version)
	EventBirthRefuse EventKind = "birth-refused" // the broker refused the birth credential too
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

// initOffline loads what the offline features keep in the keystore: the
// anchor set, the data keyset and the firmware slots.
func (a *Agent) initOffline() error {
	if b := a.ks.AnchorSet(); len(b) > 0 {
		cur, err := anchors.Parse(b)
		if err != nil {
			return fmt.Errorf("device: stored anchors: %w", err)
		}
		if err := a.useAnchors(cur, false); err != nil {
			return err
		}
	}
	a.keys = &datakey.Keyset{}
	if b := a.ks.DataKeys(); len(b) > 0 {
		if err := a.keys.UnmarshalBinary(b); err != nil {
			return fmt.Errorf("device: stored data keys: %w", err)
		}
	}
	if f := a.opts.Firmware; f != nil {
		if f.Fetch == nil {
			return errors.New("device: firmware updates need a Fetch function")
		}
		s, err := firmware.OpenSlots(f.Dir, f.Identity)
		if err != nil {
			return err
		}
		a.fw = s
	}
	return nil
}

// useAnchors makes cur the agent's trust: its root for certificates and
// the server's TLS certificate, its update key for delegations.
func (a *Agent) useAnchors(cur *anchors.Signed, persist bool) error {
	root, err := cur.RootCert()
	if err != nil {
		return err
	}
	upd, err := cur.UpdatePublicKey()
	if err != nil {
		return err
	}
	kid, err := protocol.KeyID(upd)
	if err != nil {
		return err
	}
	if persist {
		if err := a.ks.SetAnchors(cur.Raw, root, upd); err != nil {
			return err
		}
		// A new update key ends the online key it certified: whatever that
		// key signed, even with a long delegation, is not trusted any more.
		if old := a.updateKID.Load(); old != nil && !bytes.Equal(*old, kid) {
			a.online.Store(nil)
		}
	} else {
		a.ks.mu.Lock()
		a.ks.setRoots(root, a.ks.anchors.PrevRoot)
		a.ks.update = upd
		a.ks.mu.Unlock()
	}
	a.anchors.Store(cur)
	a.updateKID.Store(&kid)
	return nil
}

// AnchorVersion returns the version of the anchor set the agent trusts.
func (a *Agent) AnchorVersion() uint32 {
	if c := a.anchors.Load(); c != nil {
		return c.Version
	}
	return 0
}

// DataKeys returns a copy of the agent's data keyset.
func (a *Agent) DataKeys() *datakey.Keyset {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	return a.keys.Clone()
}

// FirmwareVersion returns the version of the firmware running (0 without
// firmware support).
func (a *Agent) FirmwareVersion() uint32 {
	if a.fw == nil {
		return 0
	}
	return a.fw.Running()
}

// heldKeys lists the data-key versions the agent can use, for hello.
func (a *Agent) heldKeys() []uint32 {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	var out []uint32
	for _, v := range a.keys.Versions() {
		if v.Status == datakey.Primary || v.Status == datakey.DecryptOnly {
			out = append(out, v.Version)
		}
	}
	return out
}

// onAnchors walks from the current set through the sets received, one
// step at a time and at most opts.AnchorSteps of them; any fault (a
// skipped version, a fork, a revoked or unknown signer, a rollback, a
// chain too long) refuses the whole message and the current set stays.
func (a *Agent) onAnchors(ctx context.Context, m *protocol.Anchors, report bool) error {
	cur := a.anchors.Load()
	if cur == nil {
		// A keystore installed before anchor chains. Its trust is the CA
		// and update key it was installed with: a version 1 that names
		// exactly those is the same trust, signed; it becomes the start of
		// the walk.
		first, err := a.adoptFirstSet(m.Sets)
		if err != nil {
			return a.reject("anchors", err)
		}
		if first == nil {
			return nil
		}
		cur = first
	}
	next, err := anchors.Walk(cur, m.Sets, anchors.WalkOptions{MaxSteps: a.opts.AnchorSteps})
	if err != nil {
		return a.reject("anchors", err)
	}
	if next == cur {
		return nil // up to date
	}
	if err := a.useAnchors(next, true); err != nil {
		return err
	}
	a.log.Info("trust anchors updated", "from", cur.Version, "to", next.Version)
	a.emit(EventAnchors, next.Version, "")
	if report && len(m.Sets) >= a.opts.AnchorSteps {
		// A full message: more sets may follow the last one. Reporting
		// the version reached asks for them.
		return a.hello(ctx)
	}
	return nil
}

// adoptFirstSet finds version 1 among sets and checks that its root and
// update key are the ones this keystore was installed with. It returns nil
// when sets carry no version 1.
func (a *Agent) adoptFirstSet(sets [][]byte) (*anchors.Signed, error) {
	for _, b := range sets {
		s, err := anchors.Parse(b)
		if err != nil || s.Version != 1 {
			continue
		}
		root, err := s.RootCert()
		if err != nil {
			return nil, err
		}
		upd, err := s.UpdatePublicKey()
		if err != nil {
			return nil, err
		}
		a.ks.mu.Lock()
		installedRoot := a.ks.rootList[0]
		installedUpd, _ := a.ks.update.(interface{ Equal(crypto.PublicKey) bool })
		a.ks.mu.Unlock()
		if !installedRoot.Equal(root) || installedUpd == nil || !installedUpd.Equal(upd) {
			return nil, errors.New("version 1 of the anchors does not name the CA and update key this device was installed with")
		}
		first, err := anchors.TrustOnInstall(b)
		if err != nil {
			return nil, err
		}
		if err := a.useAnchors(first, true); err != nil {
			return nil, err
		}
		a.log.Info("anchor chain adopted from the installed CA and update key")
		return first, nil
	}
	return nil, nil
}

// onKey opens a data key sealed to this device's identity key and adds it
// to the keyset.
func (a *Agent) onKey(m *protocol.Key) error {
	if m.Slot != protocol.SlotData {
		return a.reject("unknown-slot", fmt.Errorf("key for slot %v", m.Slot))
	}
	st := a.ks.State()
	var raw []byte
	var err error
	for _, v := range []uint32{st.Active, st.Pending, st.Previous} {
		if v == 0 {
			continue
		}
		k, kerr := a.ks.Key(v)
		if kerr != nil {
			continue
		}
		raw, err = protocol.OpenEncrypt0(k, m.Sealed, a.ks.ID().ID)
		if !errors.Is(err, protocol.ErrWrongRecipient) {
			break
		}
	}
	if err != nil || raw == nil {
		return a.reject("data-key", fmt.Errorf("v%d: %w", m.Version, err))
	}
	defer clear(raw)
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	ks := a.keys.Clone()
	have := slices.ContainsFunc(ks.Versions(), func(v datakey.VersionInfo) bool { return v.Version == m.Version })
	switch {
	case have && m.Status == protocol.KeyStatusPrimary:
		err = ks.SetPrimary(m.Version)
	case have:
		return nil // a repeat
	case m.Status == protocol.KeyStatusPrimary:
		if err = ks.Add(m.Version, raw); err == nil && ks.PrimaryVersion() != m.Version {
			err = ks.SetPrimary(m.Version)
		}
	default:
		err = ks.Add(m.Version, raw)
	}
	if err != nil {
		return a.reject("data-key", fmt.Errorf("v%d: %w", m.Version, err))
	}
	b, err := ks.MarshalBinary()
	if err != nil {
		return err
	}
	if err := a.ks.SaveDataKeys(b); err != nil {
		return err
	}
	a.keys = ks
	a.emit(EventDataKey, m.Version, "")
	return nil
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

// reenroll connects with the birth credential, which reaches only the
// re-enrolment topics, and asks for a new identity. It returns errReconnect
// once the certificate is stored as pending: the next dial uses it.
func (a *Agent) reenroll(ctx context.Context, gen uint64) error {
	bkey, bcert, err := a.ks.BirthCredential()
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(a.opts.Broker)
	if err != nil {
		return fmt.Errorf("device: broker address %q: %w", a.opts.Broker, err)
	}
	id := a.ks.ID().ID
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker:   a.opts.Broker,
		ClientID: id,
		TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{bcert.Raw}, PrivateKey: bkey, Leaf: bcert}},
			RootCAs: a.ks.Roots(), ServerName: host, MinVersion: tls.VersionTLS12, CurvePreferences: deviceCurves,
			Time: a.opts.Now},
		Subscriptions: []string{a.topics.ReenrollDown(id)},
		OnMessage: func(topic string, payload []byte) {
			select {
			case a.inbox <- inMsg{topic: topic, payload: append([]byte(nil), payload...), gen: gen}:
			case <-ctx.Done():
			}
		},
		OnLost: func(err error) {
			select {
			case a.inbox <- inMsg{lost: err, gen: gen}:
			case <-ctx.Done():
			}
		},
		KeepAlive: 5 * time.Minute,
	})
	if err != nil {
		if errors.Is(err, mqttc.ErrRefused) {
			a.emit(EventBirthRefuse, 0, err.Error())
		}
		return fmt.Errorf("device: connect with birth credential: %w", err)
	}
	defer conn.Close()
	a.emit(EventReenrolling, 0, "")
	key, err := a.ks.BeginReenroll()
	if err != nil {
		return err
	}
	csr, err := CSR(id, key)
	if err != nil {
		return err
	}
	send := func() error {
		m := protocol.Stamp(&protocol.Reenroll{CSR: csr, Anchors: a.AnchorVersion()}, a.opts.Now(), 0)
		m.RID = protocol.NewID()
		b, err := a.codec.Seal(m, bkey, id)
		if err != nil {
			return err
		}
		return conn.Publish(ctx, a.topics.Reenroll(id), b)
	}
	if err := send(); err != nil {
		return err
	}
	a.log.Info("re-enrolling with the birth credential")
	timer := time.NewTimer(a.opts.StepTimeout)
	defer timer.Stop()
	for tries := 1; ; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if tries >= 3 {
				return errors.New("device: no answer to re-enrolment")
			}
			tries++
			if err := send(); err != nil {
				return err
			}
			timer.Reset(a.opts.StepTimeout)
		case in := <-a.inbox:
			if in.gen != gen {
				continue
			}
			if in.lost != nil {
				return fmt.Errorf("device: re-enrolment session lost: %w", in.lost)
			}
			env, err := a.codec.Open(in.payload)
			if err != nil || env.IsSigned() {
				// Signed answers are errors from the online key, which this
				// session cannot check: the timer retries.
				continue
			}
			msg, err := a.codec.Message(env)
			if err != nil {
				continue
			}
			switch msg := msg.(type) {
			case *protocol.Anchors:
				if err := a.onAnchors(ctx, msg, false); err != nil {
					return err
				}
			case *protocol.Cert:
				der, err := protocol.ExpandLeaf(msg.Cert, &key.PublicKey)
				if err != nil {
					a.log.Warn("re-enrolled certificate refused", "err", err)
					continue
				}
				if _, err := a.ks.AdoptReenrolled(msg.Version, msg.RID, der, a.opts.Now()); err != nil {
					a.log.Warn("re-enrolled certificate refused", "err", err)
					continue
				}
				a.log.Info("re-enrolled", "version", msg.Version)
				a.emit(EventReenrolled, msg.Version, "")
				return errReconnect
			}
		}
	}
}
