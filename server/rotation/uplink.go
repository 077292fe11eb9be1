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
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// HandleUplink processes one message from a device's up topic. A refused
// message returns a *Rejection, is counted under its reason and changes
// nothing; other errors are internal (store, HSM) and are logged.
func (e *Engine) HandleUplink(ctx context.Context, topic string, payload []byte) error {
	var au authenticated
	err := e.handle(ctx, topic, payload, &au)
	if err == nil {
		return nil
	}
	reason := ReasonOf(err)
	if reason != "" {
		// Counted always (below); logged once per topic and reason per
		// interval, so a device sending garbage in a loop cannot fill
		// the disk.
		e.logs.Log(e.log, slog.LevelWarn, topic+"/"+reason, "uplink rejected", "topic", topic, "reason", reason, "err", err)
	} else {
		reason = "internal"
		e.log.Error("uplink failed", "topic", topic, "err", err)
	}
	e.stats.reject(reason)
	if au.device != "" && reason != "internal" {
		// The sender proved who it is: tell it why, so its log shows it.
		// Unauthenticated input gets no answer, and an internal failure
		// (often the very publish that would carry the answer) none either.
		topic := e.opts.Topics.Down(au.device)
		if au.reenroll {
			topic = e.opts.Topics.ReenrollDown(au.device)
		}
		e.sendError(ctx, au.device, topic, au.ref, reason)
	}
	return err
}

// authenticated records, for a message whose signature verified, who sent
// it and its id.
type authenticated struct {
	device   string
	ref      []byte
	reenroll bool // it came on the re-enrolment topic: answer there
}

// errorCodes maps rejection reasons to the wire's error codes.
var errorCodes = map[string]protocol.ErrorCode{
	"malformed": protocol.CodeMalformed, "unsigned": protocol.CodeMalformed, "unexpected-type": protocol.CodeMalformed,
	"unknown-slot": protocol.CodeMalformed,
	"replay":       protocol.CodeReplay, "expired": protocol.CodeExpired, "stale": protocol.CodeExpired,
	"unknown-version": protocol.CodeUnknownVersion, "not-pending": protocol.CodeUnknownVersion,
	"already-issued": protocol.CodeUnknownVersion, "no-rotation": protocol.CodeNoRotation,
	"bad-csr": protocol.CodeBadCSR, "csr-identity": protocol.CodeBadCSR, "key-reuse": protocol.CodeBadCSR,
	"not-current-key": protocol.CodeBadSignature, "revoked": protocol.CodeRevoked, "internal": protocol.CodeInternal,
	"unknown-device": protocol.CodeUnknownDevice, "no-birth-credential": protocol.CodeUnknownDevice,
	"reenroll-too-soon": protocol.CodeReplay,
}

func (e *Engine) sendError(ctx context.Context, device, topic string, ref []byte, reason string) {
	code, ok := errorCodes[reason]
	if !ok {
		code = protocol.CodeInternal
	}
	m := protocol.Stamp(&protocol.Error{Code: code, Ref: ref, Detail: reason}, e.now(), e.opts.CommandTTL)
	b, err := e.seal(m, device)
	if err == nil {
		err = e.publish(ctx, topic, b)
	}
	if err != nil {
		e.log.Warn("error reply not sent", "device", device, "err", err)
	}
}

func (e *Engine) handle(ctx context.Context, topic string, payload []byte, au *authenticated) error {
	dev, err := e.opts.Topics.ParseUp(topic)
	reenroll := false
	if err != nil {
		if dev, err = e.opts.Topics.ParseReenroll(topic); err != nil {
			return reject("bad-topic", "%w", err)
		}
		reenroll = true
	}
	env, err := e.codec.Open(payload)
	if err != nil {
		return reject(protocolReason(err), "%w", err)
	}
	if reenroll && env.IsSigned() {
		return e.handleReenroll(ctx, dev, env, au)
	}
	if !env.IsSigned() {
		if _, err := e.codec.Decode(env.Payload); err != nil {
			return reject(protocolReason(err), "device %s: %w", dev, err)
		}
		return reject("unsigned", "device %s sent an unsigned message", dev)
	}
	d, err := e.st.GetDevice(ctx, dev)
	if errors.Is(err, store.ErrNotExist) {
		return reject("unknown-device", "%s", dev)
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
		return reject("revoked", "device %s is revoked", dev)
	}
	now := e.now()
	slot := d.Slot(protocol.SlotIdentity)
	kv := slot.ByKeyID(env.KID)
	if kv == nil || len(kv.Cert) == 0 {
		return reject("unknown-key", "device %s: no key %x", dev, env.KID)
	}
	if !e.accepted(kv, now) {
		return reject("key-not-accepted", "device %s: version %d is %v", dev, kv.Version, kv.State)
	}
	pub, err := parsePub(kv)
	if err != nil {
		return err
	}
	if err := env.Verify(pub, dev); err != nil {
		return reject("bad-signature", "device %s: %w", dev, err)
	}
	m, err := e.codec.Message(env)
	if err != nil {
		return reject(protocolReason(err), "device %s: %w", dev, err)
	}
	h := m.Hdr()
	e.stats.Uplinks.Add(1)
	if kv.State == store.StateSuperseded {
		e.stats.OldKeyUplinks.Add(1)
	}
	if _, isErr := m.(*protocol.Error); !isErr {
		au.device, au.ref = dev, h.ID // never answer an error with an error
	}
	if err := protocol.CheckTime(h, now); err != nil {
		return reject("expired", "device %s: %w", dev, err)
	}
	if time.Unix(int64(h.IAT), 0).Add(e.opts.CommandTTL).Before(now) {
		return reject("stale", "device %s: %v issued at %d", dev, protocol.TypeOf(m), h.IAT)
	}
	rkey := dev + "/" + string(h.ID)
	if e.replays.seen(rkey, now) {
		return reject("replay", "device %s: message %x seen before", dev, h.ID)
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
		return reject("unexpected-type", "device %s sent %v", dev, protocol.TypeOf(m))
	}
	if err != nil && ReasonOf(err) == "" {
		e.replays.forget(rkey) // internal failure: let the device retry the same message
	}
	return err
}

func (e *Engine) onHello(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Hello) error {
	var rep protocol.SlotVersion
	for _, s := range m.Slots {
		if s.Slot == protocol.SlotIdentity {
			rep = s
		}
	}
	// Anchors first: the delegation, the certificates and the firmware
	// that follow may be signed by keys only the newer sets name.
	if err := e.sendAnchors(ctx, d.ID, e.opts.Topics.Down(d.ID), m.Anchors); err != nil {
		return err
	}
	if cur := e.signer.Current(); !bytes.Equal(m.Delegation, cur.KID()) {
		// The device cannot check our downlinks without the current
		// delegation: send it before anything else.
		if err := e.send(ctx, d.ID, cur.Delegation); err != nil {
			return err
		}
	}
	slot := d.Slot(protocol.SlotIdentity)
	// A hello signed by an issued version's key, reporting it active, proves
	// the device holds the new key and the broker accepted the new
	// certificate: the same proof as an Activated whose delivery was lost.
	if kv.State == store.StateIssued && rep.Active == kv.Version {
		nd, err := e.activate(ctx, d.ID, kv.Version, kv.RID, nil)
		if err != nil {
			return err
		}
		d = nd
		slot = d.Slot(protocol.SlotIdentity)
	} else if (rep.Active != slot.Reported && slot.Version(rep.Active) != nil) || m.Anchors != d.Anchors || m.Firmware != d.Firmware {
		nd, err := e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
			s := d.Slot(protocol.SlotIdentity)
			if (s.Reported == rep.Active || s.Version(rep.Active) == nil) && d.Anchors == m.Anchors && d.Firmware == m.Firmware {
				return nil, store.ErrNoChange
			}
			if s.Version(rep.Active) != nil {
				s.Reported = rep.Active
			}
			d.Anchors, d.Firmware = m.Anchors, m.Firmware
			return nil, nil
		})
		if err != nil {
			return fmt.Errorf("rotation: record report of %s: %w", d.ID, err)
		}
		d = nd
	}
	if nd, err := e.renewIfDue(ctx, d, kv); err != nil {
		return err
	} else if nd != nil {
		d = nd
	}
	if err := e.reconcile(ctx, d, rep); err != nil {
		return err
	}
	if err := e.sendDataKeys(ctx, d, kv, m.DataKeys); err != nil {
		return err
	}
	return e.sendFirmware(ctx, d.ID, m.Firmware)
}

// renewIfDue opens a rotation, on the policy's behalf, for a device whose
// active certificate is in its renewal window or expired (the device then
// connected within the window after expiry). It returns the updated device,
// or nil when nothing was due.
func (e *Engine) renewIfDue(ctx context.Context, d *store.Device, kv *store.KeyVersion) (*store.Device, error) {
	if kv.State != store.StateActive {
		return nil, nil
	}
	if l := d.Slot(protocol.SlotIdentity).Latest(); l != nil && (l.State == store.StatePending || l.State == store.StateIssued) {
		return nil, nil // a rotation is already open
	}
	c, err := x509.ParseCertificate(kv.Cert)
	if err != nil {
		return nil, fmt.Errorf("rotation: certificate of %s v%d: %w", d.ID, kv.Version, err)
	}
	now := e.now()
	due, why := e.opts.Policy.NeedsRenewal(d.ID, c.NotBefore, c.NotAfter, now)
	if !due {
		return nil, nil
	}
	expired := !now.Before(c.NotAfter)
	r, err := e.requestRotation(ctx, d.ID, "policy", false)
	if err != nil {
		return nil, err
	}
	e.log.Info("renewal due", "device", d.ID, "slot", "identity", "version", kv.Version, "reason", why,
		"rotation", fmt.Sprintf("%x", r.RID), "expired", expired)
	return e.st.GetDevice(ctx, d.ID)
}

// reconcile sends what takes the device from rep to the desired state.
func (e *Engine) reconcile(ctx context.Context, d *store.Device, rep protocol.SlotVersion) error {
	slot := d.Slot(protocol.SlotIdentity)
	if latest := slot.Latest(); latest != nil {
		switch latest.State {
		case store.StatePending:
			if err := e.sendRotate(ctx, d.ID, latest); err != nil {
				return err
			}
		case store.StateIssued:
			if rep.Active != latest.Version {
				if err := e.sendCert(ctx, d.ID, latest); err != nil {
					return err
				}
			}
		}
	}
	if rep.Previous != 0 {
		if pv := slot.Version(rep.Previous); pv == nil || pv.State == store.StateRetired || pv.State == store.StateRevoked {
			return e.sendRetire(ctx, d.ID, rep.Previous)
		}
	}
	return nil
}

func (e *Engine) onEnroll(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Enroll) error {
	if m.Slot != protocol.SlotIdentity {
		return reject("unknown-slot", "device %s: slot %v", d.ID, m.Slot)
	}
	if kv.State != store.StateActive {
		return reject("not-current-key", "device %s: enroll signed by version %d (%v), not the active one", d.ID, kv.Version, kv.State)
	}
	slot := d.Slot(protocol.SlotIdentity)
	sv := slot.Version(m.Version)
	if sv == nil || !bytes.Equal(sv.RID, m.RID) {
		return reject("no-rotation", "device %s: no rotation %x to version %d", d.ID, m.RID, m.Version)
	}
	if bytes.Equal(sv.EnrollID, m.ID) {
		return reject("replay", "device %s: enroll %x already processed", d.ID, m.ID)
	}
	pub, kid, err := checkCSR(d.ID, m.CSR)
	if err != nil {
		return err
	}
	if old := slot.ByKeyID(kid); old != nil && old.Version != sv.Version {
		return reject("key-reuse", "device %s: the CSR's key is version %d's", d.ID, old.Version)
	}
	switch sv.State {
	case store.StatePending:
	case store.StateIssued:
		if bytes.Equal(sv.KeyID, kid) {
			// The device did not get its certificate: send it again.
			e.stats.Resent.Add(1)
			return e.sendCert(ctx, d.ID, sv)
		}
		return reject("already-issued", "device %s: version %d was issued for another key", d.ID, sv.Version)
	default:
		return reject("not-pending", "device %s: version %d is %v", d.ID, sv.Version, sv.State)
	}

	cert, err := e.issuer.Issue(ctx, certs.Request{
		Identity:  certs.Identity{Role: certs.RoleDevice, Name: d.ID},
		PublicKey: pub,
	})
	if err != nil {
		return fmt.Errorf("rotation: issue %s v%d: %w", d.ID, sv.Version, err)
	}
	now := e.now()
	var issued *store.KeyVersion
	_, err = e.st.UpdateDevice(ctx, d.ID, func(d *store.Device) ([]store.Event, error) {
		v := d.Slot(protocol.SlotIdentity).Version(m.Version)
		if v == nil || v.State != store.StatePending || !bytes.Equal(v.RID, m.RID) {
			return nil, reject("not-pending", "device %s: version %d changed meanwhile", d.ID, m.Version)
		}
		v.State = store.StateIssued
		v.Cert = cert.Raw
		v.KeyID = kid
		v.Serial = cert.SerialNumber.Text(16)
		v.NotAfter = cert.NotAfter
		v.EnrollID = m.ID
		v.IssuedAt = now
		issued = v
		return []store.Event{{Action: "issued", Device: d.ID, Slot: uint8(m.Slot), Version: m.Version, RID: m.RID,
			Actor: "device", Detail: "serial " + v.Serial}}, nil
	})
	if err != nil {
		return err
	}
	e.stats.Issued.Add(1)
	e.emit(StateChange{Device: d.ID, Slot: m.Slot, Version: m.Version, State: store.StateIssued, RID: m.RID,
		Latency: now.Sub(issued.RequestedAt)})
	return e.sendCert(ctx, d.ID, issued)
}

// checkCSR applies the enrolment policy to a device's CSR (DER) and
// returns its key and key id, or the rejection that names why not.
func checkCSR(device string, der []byte) (*ecdsa.PublicKey, []byte, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, reject("bad-csr", "device %s: %w", device, err)
	}
	pub, err := certs.CheckCSR(csr, device)
	if errors.Is(err, certs.ErrCSRIdentity) {
		return nil, nil, reject("csr-identity", "device %s: %w", device, err)
	} else if err != nil {
		return nil, nil, reject("bad-csr", "device %s: %w", device, err)
	}
	kid, err := protocol.KeyID(pub)
	if err != nil {
		return nil, nil, reject("bad-csr", "device %s: %w", device, err)
	}
	return pub, kid, nil
}

func (e *Engine) onActivated(ctx context.Context, d *store.Device, kv *store.KeyVersion, m *protocol.Activated) error {
	if m.Slot != protocol.SlotIdentity {
		return reject("unknown-slot", "device %s: slot %v", d.ID, m.Slot)
	}
	if kv.Version != m.Version || !bytes.Equal(kv.RID, m.RID) {
		return reject("unknown-version", "device %s: activation of version %d signed by version %d's key", d.ID, m.Version, kv.Version)
	}
	switch kv.State {
	case store.StateIssued:
		nd, err := e.activate(ctx, d.ID, m.Version, m.RID, m.ID)
		if err != nil {
			return err
		}
		// The activation is the device's report after a rotation (it sends
		// no hello then): anything else pending goes out now.
		return e.reconcile(ctx, nd, protocol.SlotVersion{Slot: protocol.SlotIdentity, Active: m.Version})
	case store.StateActive:
		if bytes.Equal(kv.ActivatedID, m.ID) {
			return reject("replay", "device %s: activation %x already processed", d.ID, m.ID)
		}
		e.stats.Resent.Add(1)
		return nil // a retried activation: already done
	}
	return reject("unknown-version", "device %s: version %d is %v", d.ID, m.Version, kv.State)
}

// activate makes version the active one and starts the previous active
// version's grace window.
func (e *Engine) activate(ctx context.Context, device string, version uint32, rid, msgID []byte) (*store.Device, error) {
	now := e.now()
	graceUntil := now.Add(e.opts.Grace)
	var superseded []uint32
	var latency time.Duration
	var renewedExpired bool
	d, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		superseded, latency = nil, 0
		s := d.Slot(protocol.SlotIdentity)
		v := s.Version(version)
		if v == nil || v.State != store.StateIssued {
			return nil, store.ErrNoChange
		}
		var events []store.Event
		renewedExpired = false
		for _, o := range s.Versions {
			if o.State == store.StateActive {
				if !v.Reenrolled && !now.Before(o.NotAfter) {
					renewedExpired = true // renewed with a key whose certificate had expired
				}
				o.State = store.StateSuperseded
				o.GraceUntil = graceUntil
				superseded = append(superseded, o.Version)
				events = append(events, store.Event{Action: "superseded", Device: device, Slot: uint8(protocol.SlotIdentity),
					Version: o.Version, RID: rid, Actor: "device"})
			}
		}
		v.State = store.StateActive
		v.ActivatedAt = now
		v.ActivatedID = msgID
		s.Reported = version
		latency = now.Sub(v.RequestedAt)
		events = append(events, store.Event{Action: "activated", Device: device, Slot: uint8(protocol.SlotIdentity),
			Version: version, RID: rid, Actor: "device"})
		return events, nil
	})
	if err != nil {
		return nil, fmt.Errorf("rotation: activate %s v%d: %w", device, version, err)
	}
	if latency == 0 && superseded == nil {
		return d, nil // already active
	}
	e.stats.Activated.Add(1)
	if renewedExpired {
		e.stats.RenewedExpired.Add(1)
	}
	e.emit(StateChange{Device: device, Slot: protocol.SlotIdentity, Version: version, State: store.StateActive, RID: rid, Latency: latency})
	for _, v := range superseded {
		e.grace.push(graceItem{device: device, slot: protocol.SlotIdentity, version: v, at: graceUntil})
		e.emit(StateChange{Device: device, Slot: protocol.SlotIdentity, Version: v, State: store.StateSuperseded, RID: rid})
	}
	return d, nil
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

func (e *Engine) sendRotate(ctx context.Context, device string, v *store.KeyVersion) error {
	m := protocol.Stamp(&protocol.Rotate{Slot: protocol.SlotIdentity, Version: v.Version}, e.now(), e.opts.CommandTTL)
	m.RID = v.RID
	b, err := e.seal(m, device)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}

func (e *Engine) sendCert(ctx context.Context, device string, v *store.KeyVersion) error {
	m := protocol.Stamp(&protocol.Cert{Slot: protocol.SlotIdentity, Version: v.Version, Cert: v.Cert}, e.now(), 0)
	m.RID = v.RID
	m.IAT = 0 // the certificate's own validity dates it
	b, err := e.codec.Bare(m)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}

func (e *Engine) sendRetire(ctx context.Context, device string, version uint32) error {
	m := protocol.Stamp(&protocol.Retire{Slot: protocol.SlotIdentity, Version: version}, e.now(), e.opts.CommandTTL)
	b, err := e.seal(m, device)
	if err != nil {
		return err
	}
	return e.send(ctx, device, b)
}
