package rotation

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// HandleUplink processes one message from a device's up topic. A refused
// message returns a *Rejection, is counted under its reason, is answered
// (see ReasonInfo.Answered) and changes nothing; other errors are internal
// (store, HSM) and are logged.
func (e *Engine) HandleUplink(ctx context.Context, topic string, payload []byte) error {
	var from sender
	err := e.handle(ctx, topic, payload, &from)
	if err == nil {
		return nil
	}
	reason := ReasonOf(err)
	if reason != "" {
		// Counted always (below); logged once per topic and reason per
		// interval, so a device sending garbage in a loop cannot fill
		// the disk.
		e.logs.Log(e.log, slog.LevelWarn, topic+"/"+string(reason), "uplink rejected", "topic", topic, "reason", reason, "err", err)
	} else {
		reason = ReasonInternal
		e.log.Error("uplink failed", "topic", topic, "err", err)
	}
	e.stats.reject(reason)
	e.answer(ctx, from, reason)
	return err
}

func (e *Engine) handle(ctx context.Context, topic string, payload []byte, from *sender) error {
	dev, err := e.opts.Topics.ParseUp(topic)
	reenroll := false
	if err != nil {
		if dev, err = e.opts.Topics.ParseReenroll(topic); err != nil {
			return reject(ReasonBadTopic, "%w", err)
		}
		reenroll = true
	}
	from.device, from.reenroll = dev, reenroll
	env, err := e.codec.Open(payload)
	if err != nil {
		return reject(protocolReason(err), "device %s: %w", dev, err)
	}
	if reenroll && env.IsSigned() {
		return e.handleReenroll(ctx, dev, env, from)
	}
	if !env.IsSigned() {
		if _, err := e.codec.Decode(env.Payload); err != nil {
			return reject(protocolReason(err), "device %s: %w", dev, err)
		}
		return reject(ReasonUnsigned, "device %s sent an unsigned message", dev)
	}
	d, err := e.st.GetDevice(ctx, dev)
	if errors.Is(err, store.ErrNotExist) {
		return reject(ReasonUnknownDevice, "no device %s", dev)
	} else if err != nil {
		return err
	}
	if d.Revoked {
		// A returning revoked device says hello to get its keys back: that
		// is the key recovery refused here.
		step := "uplink"
		if m, err := e.codec.Decode(env.Payload); err == nil {
			step = protocol.TypeOf(m).String()
			if step == "hello" {
				step = "key-recovery"
			}
		}
		e.auditRefusal(ctx, dev, step, "device revoked")
		return reject(ReasonRevoked, "device %s is revoked", dev)
	}
	now := e.now()
	// The uplink is signed by a version of the device's credential.
	kv := d.Slot(credentialSlot).ByKeyID(env.KID)
	if kv == nil || len(kv.Cert) == 0 {
		return reject(ReasonUnknownKey, "device %s: no key %x", dev, env.KID)
	}
	if !e.accepted(kv, now) {
		return reject(ReasonKeyNotAccepted, "device %s: version %d is %v", dev, kv.Version, kv.State)
	}
	pub, err := parsePub(kv)
	if err != nil {
		return err
	}
	if err := env.Verify(pub, dev); err != nil {
		return reject(ReasonBadSignature, "device %s: %w", dev, err)
	}
	m, err := e.codec.Message(env)
	if err != nil {
		return reject(protocolReason(err), "device %s: %w", dev, err)
	}
	h := m.Hdr()
	e.stats.Uplinks.Add(1)
	if kv.State == lifecycle.StateSuperseded {
		e.stats.OldKeyUplinks.Add(1)
	}
	from.ref = h.ID
	_, from.quiet = m.(*protocol.Error) // never answer an error with an error
	rkey, err := e.checkFresh(dev, h, now)
	if err != nil {
		if en, ok := m.(*protocol.Enroll); ok && ReasonOf(err) == ReasonReplay {
			return e.duplicateEnroll(ctx, d, en, err)
		}
		return err
	}
	switch m := m.(type) {
	case *protocol.Hello:
		err = e.onHello(ctx, d, kv, m)
	case *protocol.Enroll:
		err = e.onEnroll(ctx, d, kv, m)
	case *protocol.Activated:
		err = e.onActivated(ctx, d, kv, m)
	case *protocol.Error:
		e.log.Warn("device reported error", "device", dev, "code", m.Code, "detail", m.Detail)
		return nil
	default:
		return reject(ReasonUnexpectedType, "device %s sent %v", dev, protocol.TypeOf(m))
	}
	if err != nil && ReasonOf(err) == "" {
		e.replays.forget(rkey) // internal failure: let the device retry the same message
	}
	return err
}

// reported returns what a hello reports of slot s.
func reported(m *protocol.Hello, s protocol.Slot) protocol.SlotVersion {
	for _, sv := range m.Slots {
		if sv.Slot == s {
			return sv
		}
	}
	return protocol.SlotVersion{Slot: s}
}

// lastSeenResolution is how stale a device's recorded last hello may get
// before a hello writes it again: fine enough for an operator's "last
// seen", coarse enough that the hellos of a reconnecting fleet do not each
// cost a store write.
const lastSeenResolution = time.Minute

func (e *Engine) onHello(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Hello) error {
	rep := reported(m, credentialSlot)
	// Anchors first: the delegation, the certificates and the firmware
	// that follow may be signed by keys only the newer sets name.
	if err := e.sendAnchors(ctx, d.ID, e.opts.Topics.Down(d.ID), m.Anchors); err != nil {
		return err
	}
	if cur := e.signer.Current(); !bytes.Equal(m.Delegation, cur.KID()) {
		// The device cannot check our downlinks without the current
		// delegation: send it before anything else, by the update key of
		// the anchors it holds (a staged roll-out's set, or the published).
		if err := e.send(ctx, d.ID, cur.DelegationFor(m.Anchors)); err != nil {
			return err
		}
	}
	slot := d.Slot(credentialSlot)
	// A hello signed by an issued version's key, reporting it active, proves
	// the device holds the new key and the broker accepted the new
	// certificate: the same proof as an Activated whose delivery was lost.
	if kv.State == lifecycle.StateIssued && rep.Active == kv.Version {
		nd, err := e.activate(ctx, d.ID, credentialSlot, kv.Version, nil)
		if err != nil {
			return err
		}
		d = nd
	} else if now := e.now(); (rep.Active != slot.Reported && slot.Version(rep.Active) != nil) || m.Anchors != d.Anchors ||
		m.Firmware != d.Firmware || m.DataPrimary != d.DataPrimary || now.Sub(d.LastSeen) >= lastSeenResolution {
		nd, err := e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
			s := d.Slot(credentialSlot)
			if (s.Reported == rep.Active || s.Version(rep.Active) == nil) && d.Anchors == m.Anchors && d.Firmware == m.Firmware &&
				d.DataPrimary == m.DataPrimary && now.Sub(d.LastSeen) < lastSeenResolution {
				return nil, store.ErrNoChange
			}
			if s.Version(rep.Active) != nil {
				s.Reported = rep.Active
			}
			d.Anchors, d.Firmware, d.DataPrimary, d.LastSeen = m.Anchors, m.Firmware, m.DataPrimary, now
			return nil, nil
		})
		if err != nil {
			return fmt.Errorf("rotation: record report of %s: %w", d.ID, err)
		}
		d = nd
	}
	if nd, err := e.renewIfDue(ctx, d, credentialSlot, kv); err != nil {
		return err
	} else if nd != nil {
		d = nd
	}
	if err := e.reconcile(ctx, d, rep); err != nil {
		return err
	}
	if err := e.sendDataKeys(ctx, d, kv, m.DataKeys, m.DataPrimary); err != nil {
		return err
	}
	return e.sendFirmware(ctx, d, m.Firmware)
}

// renewIfDue opens a rotation of slot, on the policy's behalf, for a
// device whose active certificate kv is in its renewal window or expired
// (the device then connected within the window after expiry). It returns
// the updated device, or nil when nothing was due.
func (e *Engine) renewIfDue(ctx context.Context, d *store.Device, slot protocol.Slot, kv *store.KeyVersion) (*store.Device, error) {
	if kv.State != lifecycle.StateActive {
		return nil, nil
	}
	if d.Slot(slot).Open() != nil {
		return nil, nil // a rotation is already open
	}
	c, err := x509.ParseCertificate(kv.Cert)
	if err != nil {
		return nil, fmt.Errorf("rotation: certificate of %s %v v%d: %w", d.ID, slot, kv.Version, err)
	}
	now := e.now()
	due, why := e.opts.Policy.For(d.Model, d.Labels).NeedsRenewal(d.ID, c.NotBefore, c.NotAfter, now)
	if !due {
		return nil, nil
	}
	expired := !now.Before(c.NotAfter)
	r, err := e.requestRotation(ctx, d.ID, slot, "policy", false)
	if err != nil {
		return nil, err
	}
	e.log.Info("renewal due", "device", d.ID, "slot", slot.String(), "version", kv.Version, "reason", why,
		"rotation", fmt.Sprintf("%x", r.RID), "expired", expired)
	return e.st.GetDevice(ctx, d.ID)
}

// reconcile sends what takes the device's slot rep.Slot from what it
// reports (rep) to the desired state.
func (e *Engine) reconcile(ctx context.Context, d *store.Device, rep protocol.SlotVersion) error {
	slot := d.Slot(rep.Slot)
	if open := slot.Open(); open != nil {
		switch open.State {
		case lifecycle.StatePending:
			if err := e.sendRotate(ctx, d.ID, rep.Slot, open); err != nil {
				return err
			}
		case lifecycle.StateIssued:
			if rep.Active != open.Version {
				if err := e.sendCert(ctx, d.ID, rep.Slot, open); err != nil {
					return err
				}
			}
		}
	}
	if rep.Previous != 0 {
		if pv := slot.Version(rep.Previous); pv == nil || pv.State.Dead() {
			return e.sendRetire(ctx, d.ID, rep.Slot, rep.Previous)
		}
	}
	if rep.Pending != 0 {
		// A rotation cancelled or failed (a campaign's rollback): the
		// device may drop the pending key and any certificate for it.
		if pv := slot.Version(rep.Pending); pv != nil && (pv.State == lifecycle.StateCancelled || pv.State == lifecycle.StateFailed) {
			return e.sendRetire(ctx, d.ID, rep.Slot, rep.Pending)
		}
	}
	return nil
}

func (e *Engine) onEnroll(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Enroll) error {
	if !rotatesByCSR(m.Slot) {
		return reject(ReasonUnknownSlot, "device %s: slot %v", d.ID, m.Slot)
	}
	if kv.State != lifecycle.StateActive {
		return reject(ReasonNotCurrentKey, "device %s: enroll signed by version %d (%v), not the active one", d.ID, kv.Version, kv.State)
	}
	slot := d.Slot(m.Slot)
	sv := slot.Version(m.Version)
	if sv == nil || !bytes.Equal(sv.RID, m.RID) {
		return reject(ReasonNoRotation, "device %s: no rotation %x to version %d", d.ID, m.RID, m.Version)
	}
	if bytes.Equal(sv.EnrollID, m.ID) && sv.State != lifecycle.StateIssued {
		return reject(ReasonReplay, "device %s: enroll %x already processed", d.ID, m.ID)
	}
	pub, kid, err := checkCSR(d.ID, m.CSR)
	if err != nil {
		return err
	}
	if old := slot.ByKeyID(kid); old != nil && old.Version != sv.Version {
		return reject(ReasonKeyReuse, "device %s: the CSR's key is version %d's", d.ID, old.Version)
	}
	switch sv.State {
	case lifecycle.StatePending:
	case lifecycle.StateIssued:
		if bytes.Equal(sv.KeyID, kid) {
			// The device did not get its certificate: send it again.
			e.stats.Resent.Add(1)
			return e.sendCert(ctx, d.ID, m.Slot, sv)
		}
		return reject(ReasonAlreadyIssued, "device %s: version %d was issued for another key", d.ID, sv.Version)
	default:
		return reject(ReasonNotPending, "device %s: version %d is %v", d.ID, sv.Version, sv.State)
	}

	cert, err := e.issuer.Issue(ctx, certs.Request{
		Identity:  identity.Identity{Role: identity.RoleDevice, Name: d.ID},
		PublicKey: pub,
		CSR:       m.CSR,
	})
	if err != nil {
		return fmt.Errorf("rotation: issue %s %v v%d: %w", d.ID, m.Slot, sv.Version, err)
	}
	now := e.now()
	var issued, twin *store.KeyVersion
	var changes []lifecycle.Change
	_, err = e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
		issued, twin, changes = nil, nil, nil
		s := d.Slot(m.Slot)
		v := s.Version(m.Version)
		if v != nil && v.State == lifecycle.StateIssued && bytes.Equal(v.RID, m.RID) &&
			bytes.Equal(v.EnrollID, m.ID) && bytes.Equal(v.KeyID, kid) {
			// A twin: another worker or node handled this very enroll (a
			// QoS 1 redelivery after its process died, or a shared
			// subscription) and committed first. The certificate it
			// recorded is the one the device must get; the one signed
			// here is dropped unrecorded and never sent.
			twin = v
			return nil, store.ErrNoChange
		}
		if v == nil || v.State != lifecycle.StatePending || !bytes.Equal(v.RID, m.RID) {
			return nil, reject(ReasonNotPending, "device %s: version %d changed meanwhile", d.ID, m.Version)
		}
		var err error
		changes, err = lifecycle.Manage(s, d.ID, m.Slot, "device").Issue(m.Version, credential(cert, kid, false), m.ID, now)
		if err != nil {
			return nil, err
		}
		issued = v
		ev := events(m.Slot, changes)
		ev[0].Detail = "serial " + v.Serial
		return ev, nil
	})
	if err != nil {
		return err
	}
	if twin != nil {
		e.stats.Resent.Add(1)
		e.log.Info("enroll committed by a twin; its certificate sent", "device", d.ID, "slot", m.Slot, "version", m.Version)
		return e.sendCert(ctx, d.ID, m.Slot, twin)
	}
	e.stats.Issued.Add(1)
	e.emit(changes)
	return e.sendCert(ctx, d.ID, m.Slot, issued)
}

// duplicateEnroll answers an enroll whose id was seen before (a QoS
// redelivery): while its version is issued for the same key, with the same
// certificate again, changing nothing; otherwise it is the replay it looks
// like.
func (e *Engine) duplicateEnroll(ctx context.Context, d *store.Device, m *protocol.Enroll, replay error) error {
	if !rotatesByCSR(m.Slot) {
		return replay
	}
	sv := d.Slot(m.Slot).Version(m.Version)
	if sv == nil || sv.State != lifecycle.StateIssued || !bytes.Equal(sv.RID, m.RID) {
		return replay
	}
	if _, kid, err := checkCSR(d.ID, m.CSR); err != nil || !bytes.Equal(sv.KeyID, kid) {
		return replay
	}
	e.stats.Resent.Add(1)
	return e.sendCert(ctx, d.ID, m.Slot, sv)
}

// credential is what the store records of an issued certificate.
func credential(cert *x509.Certificate, kid []byte, reenrolled bool) lifecycle.Credential {
	return lifecycle.Credential{Cert: cert.Raw, KeyID: kid, Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter,
		Reenrolled: reenrolled}
}

// checkCSR applies the enrolment policy to a device's CSR (DER) and
// returns its key and key id, or the rejection that names why not.
func checkCSR(device string, der []byte) (*ecdsa.PublicKey, []byte, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, reject(ReasonBadCSR, "device %s: %w", device, err)
	}
	pub, err := certs.CheckCSR(csr, device)
	if errors.Is(err, certs.ErrCSRIdentity) {
		return nil, nil, reject(ReasonCSRIdentity, "device %s: %w", device, err)
	} else if err != nil {
		return nil, nil, reject(ReasonBadCSR, "device %s: %w", device, err)
	}
	kid, err := protocol.KeyID(pub)
	if err != nil {
		return nil, nil, reject(ReasonBadCSR, "device %s: %w", device, err)
	}
	return pub, kid, nil
}

func (e *Engine) onActivated(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Activated) error {
	if !rotatesByCSR(m.Slot) {
		return reject(ReasonUnknownSlot, "device %s: slot %v", d.ID, m.Slot)
	}
	if kv.Version != m.Version || !bytes.Equal(kv.RID, m.RID) {
		return reject(ReasonUnknownVersion, "device %s: activation of version %d signed by version %d's key", d.ID, m.Version, kv.Version)
	}
	switch kv.State {
	case lifecycle.StateIssued:
		nd, err := e.activate(ctx, d.ID, m.Slot, m.Version, m.ID)
		if err != nil {
			return err
		}
		// The activation is the device's report after a rotation (it sends
		// no hello then): anything else pending goes out now.
		return e.reconcile(ctx, nd, protocol.SlotVersion{Slot: m.Slot, Active: m.Version})
	case lifecycle.StateActive:
		if bytes.Equal(kv.ActivatedID, m.ID) {
			return reject(ReasonReplay, "device %s: activation %x already processed", d.ID, m.ID)
		}
		e.stats.Resent.Add(1)
		return nil // a retried activation: already done
	}
	return reject(ReasonUnknownVersion, "device %s: version %d is %v", d.ID, m.Version, kv.State)
}

// activate makes issued version the active one of slot and starts the
// previous active version's grace window.
func (e *Engine) activate(ctx context.Context, device string, slot protocol.Slot, version uint32, msgID []byte) (*store.Device, error) {
	now := e.now()
	var graceUntil time.Time
	var changes []lifecycle.Change
	var renewedExpired bool
	d, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changes, renewedExpired = nil, false
		graceUntil = now.Add(e.graceOf(d))
		s := d.Slot(slot)
		v := s.Version(version)
		if v == nil || v.State != lifecycle.StateIssued {
			return nil, store.ErrNoChange
		}
		if old := s.Active(); old != nil && !v.Reenrolled && !now.Before(old.NotAfter) {
			renewedExpired = true // renewed with a key whose certificate had expired
		}
		var err error
		if changes, err = lifecycle.Manage(s, device, slot, "device").Activate(version, msgID, now, graceUntil); err != nil {
			return nil, err
		}
		s.Reported = version
		return events(slot, changes), nil
	})
	if err != nil {
		return nil, fmt.Errorf("rotation: activate %s %v v%d: %w", device, slot, version, err)
	}
	if changes == nil {
		return d, nil // already active
	}
	e.stats.Activated.Add(1)
	if renewedExpired {
		e.stats.RenewedExpired.Add(1)
	}
	for _, c := range changes {
		if c.To == lifecycle.StateSuperseded {
			e.grace.push(graceItem{device: device, slot: slot, version: c.Version, at: graceUntil})
		}
	}
	e.emit(changes)
	return d, nil
}

// graceOf is how long d's superseded versions stay accepted: Options.Grace
// if set, else its policy's, as it is now.
func (e *Engine) graceOf(d *store.Device) time.Duration {
	if e.opts.Grace != 0 {
		return e.opts.Grace
	}
	return e.opts.Policy.For(d.Model, d.Labels).Grace.D()
}

func (e *Engine) seal(m protocol.Message, device string) ([]byte, error) {
	return e.signer.Current().Seal(e.codec, m, device)
}

func (e *Engine) send(ctx context.Context, device string, b []byte) error {
	return e.publish(ctx, e.opts.Topics.Down(device), b)
}

func (e *Engine) publish(ctx context.Context, topic string, b []byte) error {
	pb := e.pub.Load()
	if pb == nil {
		return nil // not connected yet: the device converges on its next hello
	}
	if err := pb.Publish(ctx, topic, b); err != nil {
		return fmt.Errorf("rotation: send on %s: %w", topic, err)
	}
	return nil
}

func (e *Engine) sendRotate(ctx context.Context, device string, slot protocol.Slot, v *store.KeyVersion) error {
	m := protocol.Stamp(&protocol.Rotate{Slot: slot, Version: v.Version}, e.now(), e.opts.CommandTTL)
	m.RID = v.RID
	b, err := e.seal(m, device)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}

// certMessage is the cert message of version v; it is not signed, since
// the CA's signature on the certificate vouches for it.
func (e *Engine) certMessage(slot protocol.Slot, v *store.KeyVersion) ([]byte, error) {
	m := protocol.Stamp(&protocol.Cert{Slot: slot, Version: v.Version, Cert: v.Cert}, e.now(), 0)
	m.RID = v.RID
	m.IAT = 0 // the certificate's own validity dates it
	return e.codec.Bare(m)
}

func (e *Engine) sendCert(ctx context.Context, device string, slot protocol.Slot, v *store.KeyVersion) error {
	b, err := e.certMessage(slot, v)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}

// sendRetire tells the device to delete version of slot.
func (e *Engine) sendRetire(ctx context.Context, device string, slot protocol.Slot, version uint32) error {
	m := protocol.Stamp(&protocol.Retire{Slot: slot, Version: version}, e.now(), e.opts.CommandTTL)
	b, err := e.seal(m, device)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}
