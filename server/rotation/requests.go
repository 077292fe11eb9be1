package rotation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// Errors of operator requests.
var (
	// ErrRevoked: the device is revoked; nothing may be done for it. The
	// broker reads it as a refusal (broker.ErrNotAccepted).
	ErrRevoked = fmt.Errorf("rotation: device revoked (%w)", broker.ErrNotAccepted)
	// ErrRefused: a credential is not (or no longer) accepted.
	ErrRefused = fmt.Errorf("rotation: %w", broker.ErrNotAccepted)
)

// Rotation names a requested rotation.
type Rotation struct {
	Device  string
	Slot    protocol.Slot
	Version uint32
	RID     []byte
	// Existing is true when a rotation was already open and is returned
	// instead of a new one.
	Existing bool
}

// RequestRotation records that device should move to a new identity
// version and tells the device if it is connected. It is idempotent: while a
// rotation is open (pending or issued) it returns that one.
func (e *Engine) RequestRotation(ctx context.Context, device, actor string) (Rotation, error) {
	return e.requestRotation(ctx, device, actor, true)
}

// requestRotation is RequestRotation; notify says whether to send the
// rotate at once (a caller inside a hello lets reconcile send it).
func (e *Engine) requestRotation(ctx context.Context, device, actor string, notify bool) (Rotation, error) {
	rid := protocol.NewID()
	now := e.now()
	var r Rotation
	d, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		if d.Revoked {
			return nil, fmt.Errorf("%w: %s", ErrRevoked, device)
		}
		s := d.Slot(protocol.SlotIdentity)
		latest := s.Latest()
		if latest != nil && (latest.State == store.StatePending || latest.State == store.StateIssued) {
			r = Rotation{Device: device, Slot: protocol.SlotIdentity, Version: latest.Version, RID: latest.RID, Existing: true}
			return nil, store.ErrNoChange
		}
		next := uint32(1)
		if latest != nil {
			next = latest.Version + 1
		}
		s.Versions = append(s.Versions, &store.KeyVersion{Version: next, State: store.StatePending, RID: rid, RequestedAt: now})
		s.Desired = next
		r = Rotation{Device: device, Slot: protocol.SlotIdentity, Version: next, RID: rid}
		return []store.Event{{Action: "requested", Device: device, Slot: uint8(protocol.SlotIdentity), Version: next, RID: rid, Actor: actor}}, nil
	})
	if err != nil {
		return Rotation{}, fmt.Errorf("rotation: request for %s: %w", device, err)
	}
	if !r.Existing {
		e.stats.Requested.Add(1)
		e.emit(StateChange{Device: device, Slot: protocol.SlotIdentity, Version: r.Version, State: store.StatePending, RID: r.RID})
	}
	v := d.Slot(protocol.SlotIdentity).Version(r.Version)
	if notify && v != nil && v.State == store.StatePending {
		if err := e.sendRotate(ctx, device, v); err != nil {
			e.log.Warn("rotate not sent; the device gets it on its next hello", "device", device, "err", err)
		}
	}
	return r, nil
}

// Provision registers a new device with its first credential, issued for
// the public key in csr (the device made the key; it never leaves it), and
// records its birth credential (IDevID) if it has one.
func (e *Engine) Provision(ctx context.Context, device string, csr *x509.CertificateRequest, birth *x509.Certificate, actor string) (*x509.Certificate, error) {
	if err := protocol.ValidateDeviceID(device); err != nil {
		return nil, err
	}
	pub, err := certs.CheckCSR(csr, device)
	if err != nil {
		return nil, err
	}
	if _, err := e.st.GetDevice(ctx, device); err == nil {
		return nil, fmt.Errorf("device %q: %w", device, store.ErrExists)
	}
	cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: device}, PublicKey: pub})
	if err != nil {
		return nil, fmt.Errorf("rotation: provision %s: %w", device, err)
	}
	kid, err := protocol.KeyID(pub)
	if err != nil {
		return nil, err
	}
	now := e.now()
	d := &store.Device{ID: device, CreatedAt: now}
	if d.Birth, err = birthRecord(birth); err != nil {
		return nil, err
	}
	d.Slot(protocol.SlotIdentity).Versions = []*store.KeyVersion{{
		Version: 1, State: store.StateActive, Cert: cert.Raw, KeyID: kid, Serial: cert.SerialNumber.Text(16),
		NotAfter: cert.NotAfter, RequestedAt: now, IssuedAt: now, ActivatedAt: now,
	}}
	d.Slot(protocol.SlotIdentity).Desired = 1
	d.Slot(protocol.SlotIdentity).Reported = 1
	if err := e.st.CreateDevice(ctx, d, store.Event{Action: "provisioned", Device: device, Slot: uint8(protocol.SlotIdentity),
		Version: 1, Actor: actor, Detail: "serial " + cert.SerialNumber.Text(16)}); err != nil {
		return nil, err
	}
	return cert, nil
}

// ProvisionItem is one device of a batch registration.
type ProvisionItem struct {
	ID  string
	CSR *x509.CertificateRequest
	// BirthCSR asks for a birth credential (IDevID) too; Birth is that
	// credential once issued, which the engine records.
	BirthCSR *x509.CertificateRequest
	Birth    *x509.Certificate
}

// birthRecord is what the store keeps of a birth certificate.
func birthRecord(c *x509.Certificate) (*store.BirthCredential, error) {
	if c == nil {
		return nil, nil
	}
	kid, err := protocol.KeyID(c.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("rotation: birth credential: %w", err)
	}
	return &store.BirthCredential{Cert: c.Raw, KeyID: kid, Serial: c.SerialNumber.Text(16)}, nil
}

// ProvisionResult is the outcome for one item.
type ProvisionResult struct {
	Cert *x509.Certificate
	Err  error
}

// provisionWorkers bounds concurrent certificate issuance in a batch: the
// token's sessions and the cores, not the batch size, set the pace.
const provisionWorkers = 4

// ProvisionBatch registers many devices at once: certificates are issued in
// parallel and the devices stored in one transaction where the store can
// (store.BatchCreator). Each item succeeds or fails on its own.
func (e *Engine) ProvisionBatch(ctx context.Context, items []ProvisionItem, actor string) []ProvisionResult {
	res := make([]ProvisionResult, len(items))
	devs := make([]*store.Device, len(items))
	now := e.now()
	sem := make(chan struct{}, provisionWorkers)
	var wg sync.WaitGroup
	for i, it := range items {
		if err := protocol.ValidateDeviceID(it.ID); err != nil {
			res[i].Err = err
			continue
		}
		pub, err := certs.CheckCSR(it.CSR, it.ID)
		if err != nil {
			res[i].Err = err
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: it.ID}, PublicKey: pub})
			if err != nil {
				res[i].Err = fmt.Errorf("rotation: provision %s: %w", it.ID, err)
				return
			}
			kid, err := protocol.KeyID(pub)
			if err != nil {
				res[i].Err = err
				return
			}
			d := &store.Device{ID: it.ID, CreatedAt: now}
			if d.Birth, err = birthRecord(it.Birth); err != nil {
				res[i].Err = err
				return
			}
			s := d.Slot(protocol.SlotIdentity)
			s.Versions = []*store.KeyVersion{{Version: 1, State: store.StateActive, Cert: cert.Raw, KeyID: kid,
				Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter, RequestedAt: now, IssuedAt: now, ActivatedAt: now}}
			s.Desired, s.Reported = 1, 1
			res[i].Cert, devs[i] = cert, d
		}()
	}
	wg.Wait()
	var batch []*store.Device
	var idx []int
	var events []store.Event
	for i, d := range devs {
		if d != nil && res[i].Err == nil {
			batch = append(batch, d)
			idx = append(idx, i)
			events = append(events, store.Event{Action: "provisioned", Device: d.ID, Slot: uint8(protocol.SlotIdentity),
				Version: 1, Actor: actor, Detail: "serial " + res[i].Cert.SerialNumber.Text(16)})
		}
	}
	if len(batch) == 0 {
		return res
	}
	if bc, ok := e.st.(store.BatchCreator); ok {
		errs, err := bc.CreateDevices(ctx, batch, events)
		for k, i := range idx {
			switch {
			case err != nil:
				res[i] = ProvisionResult{Err: err}
			case errs[k] != nil:
				res[i] = ProvisionResult{Err: errs[k]}
			}
		}
		return res
	}
	for k, i := range idx {
		if err := e.st.CreateDevice(ctx, batch[k], events[k]); err != nil {
			res[i] = ProvisionResult{Err: err}
		}
	}
	return res
}

// CheckCredential implements broker.CredentialChecker: a device certificate
// is accepted while its version is issued, active or within grace, and the
// device is not revoked.
func (e *Engine) CheckCredential(ctx context.Context, id identity.Identity, leaf *x509.Certificate) error {
	if id.Role == identity.RoleIDevID {
		return e.checkBirth(ctx, id, leaf)
	}
	if id.Role != identity.RoleDevice {
		return fmt.Errorf("%w: role %s", ErrRefused, id.Role)
	}
	d, err := e.st.GetDevice(ctx, id.Name)
	if errors.Is(err, store.ErrNotExist) {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	} else if err != nil {
		return fmt.Errorf("rotation: check credential of %s: %w", id.Name, err) // not a refusal
	}
	if d.Revoked {
		e.auditRefusal(ctx, id.Name, "connect", "device revoked")
		return fmt.Errorf("%w: %s", ErrRevoked, id.Name)
	}
	kid, err := protocol.KeyID(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	kv := d.Slot(protocol.SlotIdentity).ByKeyID(kid)
	if kv == nil || kv.Serial != leaf.SerialNumber.Text(16) {
		return fmt.Errorf("%w: %s: unknown certificate", ErrRefused, id.Name)
	}
	if !e.accepted(kv, e.now()) {
		return fmt.Errorf("%w: %s: version %d is %v", ErrRefused, id.Name, kv.Version, kv.State)
	}
	if kv.State == store.StateSuperseded {
		e.stats.OldKeyConnects.Add(1)
	}
	return nil
}

// accepted reports whether a credential of version k may authenticate at
// now: while issued, active or within grace and unexpired, and, for the
// active version, also within the policy's window after expiry, when it
// may only renew (the broker restricts such a session to its rotation
// topics).
func (e *Engine) accepted(k *store.KeyVersion, now time.Time) bool {
	if k.Accepted(now) {
		return true
	}
	// An issued version counts too: the device may have switched to it and
	// lost its confirmation before it went away.
	return (k.State == store.StateActive || k.State == store.StateIssued) &&
		e.opts.Policy.IdentityAccess(k.NotAfter, now) == policy.AccessRenew
}

// Resend sends a device the step of its open rotation again (rotate while
// pending, cert while issued): the broker calls it when messages to the
// device may have been lost.
func (e *Engine) Resend(ctx context.Context, device string) error {
	d, err := e.st.GetDevice(ctx, device)
	if err != nil {
		return err
	}
	if d.Revoked {
		return nil
	}
	l := d.Slot(protocol.SlotIdentity).Latest()
	if l == nil {
		return nil
	}
	switch l.State {
	case store.StatePending:
		e.stats.Resent.Add(1)
		return e.sendRotate(ctx, device, l)
	case store.StateIssued:
		e.stats.Resent.Add(1)
		return e.sendCert(ctx, device, l)
	}
	return nil
}
