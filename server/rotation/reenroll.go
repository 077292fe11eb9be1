package rotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// checkBirth implements CheckCredential for a birth credential: the device
// must be known, not revoked, and this must be the IDevID it was born with.
func (e *Engine) checkBirth(ctx context.Context, id identity.Identity, leaf *x509.Certificate) error {
	e.stats.BirthConnects.Add(1)
	d, err := e.st.GetDevice(ctx, id.Name)
	if errors.Is(err, store.ErrNotExist) {
		return refused("no device %s", id.Name)
	} else if err != nil {
		return fmt.Errorf("rotation: check birth credential of %s: %w", id.Name, err)
	}
	if d.Revoked {
		e.stats.RevokedConnects.Add(1)
		e.auditRefusal(ctx, id.Name, "connect-idevid", "device revoked")
		return revoked(id.Name)
	}
	if d.Birth == nil || d.Birth.Serial != leaf.SerialNumber.Text(16) {
		return refused("%s: not the birth credential on record", id.Name)
	}
	return nil
}

// handleReenroll processes a message from a re-enrolment topic: signed by
// the device's birth credential, it asks for a new identity.
func (e *Engine) handleReenroll(ctx context.Context, dev string, env *protocol.Envelope, from *sender) error {
	d, err := e.st.GetDevice(ctx, dev)
	if errors.Is(err, store.ErrNotExist) {
		return reject(ReasonUnknownDevice, "no device %s", dev)
	} else if err != nil {
		return err
	}
	if d.Revoked {
		e.auditRefusal(ctx, dev, "reenroll", "device revoked")
		return reject(ReasonRevoked, "device %s is revoked", dev)
	}
	if d.Birth == nil {
		return reject(ReasonNoBirthCredential, "device %s has no birth credential on record", dev)
	}
	if !bytes.Equal(env.KID, d.Birth.KeyID) {
		return reject(ReasonUnknownKey, "device %s: re-enrolment signed by key %x, not its birth key", dev, env.KID)
	}
	bc, err := x509.ParseCertificate(d.Birth.Cert)
	if err != nil {
		return fmt.Errorf("rotation: stored birth certificate of %s: %w", dev, err)
	}
	if err := env.Verify(bc.PublicKey, dev); err != nil {
		return reject(ReasonBadSignature, "device %s: %w", dev, err)
	}
	m, err := e.codec.Message(env)
	if err != nil {
		return reject(protocolReason(err), "device %s: %w", dev, err)
	}
	from.ref = m.Hdr().ID
	re, ok := m.(*protocol.Reenroll)
	if !ok {
		return reject(ReasonUnexpectedType, "device %s sent %v on its re-enrolment topic", dev, protocol.TypeOf(m))
	}
	rkey, err := e.checkFresh(dev, &re.Header, e.now())
	if err != nil {
		if ReasonOf(err) == ReasonReplay {
			return e.duplicateReenroll(ctx, d, re, err)
		}
		return err
	}
	err = e.onReenroll(ctx, d, re)
	if err != nil && ReasonOf(err) == "" {
		e.replays.forget(rkey)
	}
	return err
}

// duplicateReenroll answers a re-enrolment whose id was seen before (a QoS
// redelivery) as a retry with a fresh id is: while the identity it got is
// issued, with the same certificate again; otherwise it is a replay.
func (e *Engine) duplicateReenroll(ctx context.Context, d *store.Device, m *protocol.Reenroll, replay error) error {
	_, kid, err := checkCSR(d.ID, m.CSR)
	if err != nil {
		return replay
	}
	old := d.Slot(credentialSlot).ByKeyID(kid)
	if old == nil || old.State != lifecycle.StateIssued || !old.Reenrolled {
		return replay
	}
	e.stats.Resent.Add(1)
	return e.answerReenroll(ctx, d.ID, m.Anchors, old)
}

func (e *Engine) onReenroll(ctx context.Context, d *store.Device, m *protocol.Reenroll) error {
	pub, kid, err := checkCSR(d.ID, m.CSR)
	if err != nil {
		return err
	}
	if bytes.Equal(kid, d.Birth.KeyID) {
		return reject(ReasonKeyReuse, "device %s: the CSR's key is its birth key", d.ID)
	}
	slot := d.Slot(credentialSlot)
	if old := slot.ByKeyID(kid); old != nil {
		// The same key again, proven by the same birth credential: the
		// answer was lost (the device retries with a fresh rotation id).
		if old.State == lifecycle.StateIssued && old.Reenrolled {
			e.stats.Resent.Add(1)
			return e.answerReenroll(ctx, d.ID, m.Anchors, old)
		}
		return reject(ReasonKeyReuse, "device %s: the CSR's key is version %d's", d.ID, old.Version)
	}
	if l := slot.Latest(); l != nil && l.Reenrolled && l.State == lifecycle.StateIssued && e.now().Sub(l.IssuedAt) < e.opts.CommandTTL {
		// A birth credential that asks again and again, with new keys, for
		// identities it never uses would make the CA sign without end: one
		// open re-enrolment per command lifetime.
		return reject(ReasonReenrollTooSoon, "device %s: version %d was issued to its birth credential %v ago and is not in use yet",
			d.ID, l.Version, e.now().Sub(l.IssuedAt).Round(time.Second))
	}
	cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: d.ID}, PublicKey: pub, CSR: m.CSR})
	if err != nil {
		return fmt.Errorf("rotation: re-enrol %s: %w", d.ID, err)
	}
	now := e.now()
	var issued *store.KeyVersion
	var changes []lifecycle.Change
	_, err = e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
		changes = nil
		if d.Revoked {
			return nil, reject(ReasonRevoked, "device %s was revoked meanwhile", d.ID)
		}
		s := d.Slot(credentialSlot)
		mg := lifecycle.Manage(s, d.ID, credentialSlot, "device:idevid")
		var ev []store.Event
		if open := s.Open(); open != nil {
			// An open rotation the device can no longer finish (its key is
			// the one it lost track of) is abandoned.
			c, err := mg.Cancel(open.Version, now)
			if err != nil {
				return nil, err
			}
			a := events(credentialSlot, c)
			a[0].Action = "abandoned"
			ev, changes = append(ev, a...), append(changes, c...)
		}
		v, c, err := mg.Request(m.RID, now)
		if err != nil {
			return nil, err
		}
		ev, changes = append(ev, events(credentialSlot, c)...), append(changes, c...)
		if c, err = mg.Issue(v.Version, credential(cert, kid, true), m.ID, now); err != nil {
			return nil, err
		}
		r := events(credentialSlot, c)
		r[0].Action, r[0].Detail = "reenrolled", "serial "+v.Serial+", birth "+d.Birth.Serial
		ev, changes = append(ev, r...), append(changes, c...)
		s.Prune()
		issued = v
		return ev, nil
	})
	if err != nil {
		return err
	}
	e.stats.Reenrolled.Add(1)
	e.stats.Issued.Add(1)
	e.emit(changes)
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
	b, err := e.certMessage(credentialSlot, v)
	if err != nil {
		return err
	}
	return e.publish(ctx, topic, b)
}
