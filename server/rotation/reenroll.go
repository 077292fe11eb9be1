package rotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// Revoke marks device revoked: every live identity version becomes revoked,
// the broker drops the device's sessions at once and refuses it from then
// on, and the engine refuses its re-enrolment and key deliveries. It is
// audited and idempotent.
func (e *Engine) Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error) {
	start := time.Now()
	now := e.now()
	_, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		if d.Revoked {
			return nil, store.ErrNoChange
		}
		d.Revoked, d.RevokedAt = true, now
		events := []store.Event{{Action: "revoked", Device: device, Actor: actor, Detail: reason}}
		for _, k := range d.Slot(protocol.SlotIdentity).Versions {
			switch k.State {
			case store.StatePending, store.StateIssued, store.StateActive, store.StateSuperseded:
				k.State = store.StateRevoked
				k.RetiredAt = now
			}
		}
		return events, nil
	})
	if err != nil {
		return 0, fmt.Errorf("rotation: revoke %s: %w", device, err)
	}
	n := 0
	if e.closer != nil {
		n = e.closer.Disconnect(device)
	}
	took := time.Since(start)
	e.log.Warn("device revoked", "device", device, "actor", actor, "sessions_dropped", n, "took", took)
	e.emit(StateChange{Device: device, Slot: protocol.SlotIdentity, State: store.StateRevoked})
	return took, nil
}

// refusals rate-limits the audit records of refused attempts: every kind of
// refusal of a device is audited, but a device retrying in a loop adds one
// record per refusalEvery, not one per attempt.
type refusals struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const refusalEvery = time.Minute

func (r *refusals) due(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < refusalEvery && now.After(t) {
		return false
	}
	r.last[key] = now
	if len(r.last) > 100_000 { // bound the memory a flood of ids could take
		clear(r.last)
	}
	return true
}

// auditRefusal records that a revoked (or otherwise barred) device was
// refused at step. It never fails the caller: the refusal stands whether or
// not its record could be written.
func (e *Engine) auditRefusal(ctx context.Context, device, step, detail string) {
	if !e.refused.due(device+"/"+step, e.now()) {
		return
	}
	if err := e.st.Audit(ctx, store.Event{Action: "refused", Device: device, Actor: step, Detail: detail}); err != nil {
		e.log.Error("audit of a refusal failed", "device", device, "step", step, "err", err)
	}
}

// checkBirth implements CheckCredential for a birth credential: the device
// must be known, not revoked, and this must be the IDevID it was born with.
func (e *Engine) checkBirth(ctx context.Context, id identity.Identity, leaf *x509.Certificate) error {
	d, err := e.st.GetDevice(ctx, id.Name)
	if errors.Is(err, store.ErrNotExist) {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	} else if err != nil {
		return fmt.Errorf("rotation: check birth credential of %s: %w", id.Name, err)
	}
	if d.Revoked {
		e.auditRefusal(ctx, id.Name, "connect-idevid", "device revoked")
		return fmt.Errorf("%w: %s", ErrRevoked, id.Name)
	}
	if d.Birth == nil || d.Birth.Serial != leaf.SerialNumber.Text(16) {
		return fmt.Errorf("%w: %s: not the birth credential on record", ErrRefused, id.Name)
	}
	return nil
}

// handleReenroll processes a message from a re-enrolment topic: signed by
// the device's birth credential, it asks for a new identity.
func (e *Engine) handleReenroll(ctx context.Context, dev string, env *protocol.Envelope, au *authenticated) error {
	d, err := e.st.GetDevice(ctx, dev)
	if errors.Is(err, store.ErrNotExist) {
		return reject("unknown-device", "%s", dev)
	} else if err != nil {
		return err
	}
	if d.Revoked {
		e.auditRefusal(ctx, dev, "reenroll", "device revoked")
		return reject("revoked", "device %s is revoked", dev)
	}
	if d.Birth == nil {
		return reject("no-birth-credential", "device %s has no birth credential on record", dev)
	}
	if !bytes.Equal(env.KID, d.Birth.KeyID) {
		return reject("unknown-key", "device %s: re-enrolment signed by key %x, not its birth key", dev, env.KID)
	}
	bc, err := x509.ParseCertificate(d.Birth.Cert)
	if err != nil {
		return fmt.Errorf("rotation: stored birth certificate of %s: %w", dev, err)
	}
	if err := env.Verify(bc.PublicKey, dev); err != nil {
		return reject("bad-signature", "device %s: %w", dev, err)
	}
	m, err := e.codec.Message(env)
	if err != nil {
		return reject(protocolReason(err), "device %s: %w", dev, err)
	}
	re, ok := m.(*protocol.Reenroll)
	if !ok {
		return reject("unexpected-type", "device %s sent %v on its re-enrolment topic", dev, protocol.TypeOf(m))
	}
	au.device, au.ref, au.reenroll = dev, re.ID, true
	now := e.now()
	if err := protocol.CheckTime(&re.Header, now); err != nil {
		return reject("expired", "device %s: %w", dev, err)
	}
	if time.Unix(int64(re.IAT), 0).Add(e.opts.CommandTTL).Before(now) {
		return reject("stale", "device %s: re-enrolment issued at %d", dev, re.IAT)
	}
	rkey := dev + "/" + string(re.ID)
	if e.replays.seen(rkey, now) {
		return reject("replay", "device %s: message %x seen before", dev, re.ID)
	}
	err = e.onReenroll(ctx, d, re)
	if err != nil && ReasonOf(err) == "" {
		e.replays.forget(rkey)
	}
	return err
}

func (e *Engine) onReenroll(ctx context.Context, d *store.Device, m *protocol.Reenroll) error {
	pub, kid, err := checkCSR(d.ID, m.CSR)
	if err != nil {
		return err
	}
	if bytes.Equal(kid, d.Birth.KeyID) {
		return reject("key-reuse", "device %s: the CSR's key is its birth key", d.ID)
	}
	slot := d.Slot(protocol.SlotIdentity)
	if old := slot.ByKeyID(kid); old != nil {
		// The same key again, proven by the same birth credential: the
		// answer was lost (the device retries with a fresh rotation id).
		if old.State == store.StateIssued && old.Reenrolled {
			// The answer was lost: send the same certificate again.
			e.stats.Resent.Add(1)
			return e.answerReenroll(ctx, d.ID, m.Anchors, old)
		}
		return reject("key-reuse", "device %s: the CSR's key is version %d's", d.ID, old.Version)
	}
	if l := slot.Latest(); l != nil && l.Reenrolled && l.State == store.StateIssued && e.now().Sub(l.IssuedAt) < e.opts.CommandTTL {
		// A birth credential that asks again and again, with new keys, for
		// identities it never uses would make the CA sign without end: one
		// open re-enrolment per command lifetime.
		return reject("reenroll-too-soon", "device %s: version %d was issued to its birth credential %v ago and is not in use yet",
			d.ID, l.Version, e.now().Sub(l.IssuedAt).Round(time.Second))
	}
	cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: d.ID}, PublicKey: pub})
	if err != nil {
		return fmt.Errorf("rotation: re-enrol %s: %w", d.ID, err)
	}
	now := e.now()
	var issued *store.KeyVersion
	_, err = e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
		if d.Revoked {
			return nil, reject("revoked", "device %s was revoked meanwhile", d.ID)
		}
		s := d.Slot(protocol.SlotIdentity)
		var events []store.Event
		next := uint32(1)
		if l := s.Latest(); l != nil {
			next = l.Version + 1
		}
		for _, k := range s.Versions {
			// An open rotation the device can no longer finish (its key
			// is the one it lost track of) is abandoned.
			if k.State == store.StatePending || k.State == store.StateIssued {
				k.State, k.RetiredAt = store.StateRetired, now
				events = append(events, store.Event{Action: "abandoned", Device: d.ID, Slot: uint8(protocol.SlotIdentity),
					Version: k.Version, RID: k.RID, Actor: "device:idevid"})
			}
		}
		v := &store.KeyVersion{Version: next, State: store.StateIssued, RID: m.RID, Cert: cert.Raw, KeyID: kid,
			Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter, EnrollID: m.ID,
			RequestedAt: now, IssuedAt: now, Reenrolled: true}
		s.Versions = append(s.Versions, v)
		s.Desired = next
		s.Prune()
		issued = v
		events = append(events, store.Event{Action: "reenrolled", Device: d.ID, Slot: uint8(protocol.SlotIdentity),
			Version: next, RID: m.RID, Actor: "device:idevid", Detail: "serial " + v.Serial + ", birth " + d.Birth.Serial})
		return events, nil
	})
	if err != nil {
		return err
	}
	e.stats.Reenrolled.Add(1)
	e.stats.Issued.Add(1)
	e.emit(StateChange{Device: d.ID, Slot: protocol.SlotIdentity, Version: issued.Version, State: store.StateIssued, RID: m.RID})
	return e.answerReenroll(ctx, d.ID, m.Anchors, issued)
}

// answerReenroll sends, on the re-enrolment topic, the anchor sets the
// device lacks (it checks the certificate against the newest root) and the
// certificate.
func (e *Engine) answerReenroll(ctx context.Context, device string, anchors uint32, v *store.KeyVersion) error {
	topic := e.opts.Topics.ReenrollDown(device)
	if err := e.sendAnchors(ctx, device, topic, anchors); err != nil {
		return err
	}
	m := protocol.Stamp(&protocol.Cert{Slot: protocol.SlotIdentity, Version: v.Version, Cert: v.Cert}, e.now(), 0)
	m.RID = v.RID
	m.IAT = 0
	b, err := e.codec.Bare(m)
	if err != nil {
		return err
	}
	return e.publish(ctx, topic, b)
}
