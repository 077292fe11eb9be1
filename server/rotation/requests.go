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
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
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
	return e.requestRotation(ctx, device, credentialSlot, actor, true)
}

// requestRotation is RequestRotation for slot; notify says whether to send
// the rotate at once (a caller inside a hello lets reconcile send it).
func (e *Engine) requestRotation(ctx context.Context, device string, slot protocol.Slot, actor string, notify bool) (Rotation, error) {
	rid := protocol.NewID()
	now := e.now()
	var r Rotation
	var changes []lifecycle.Change
	d, err := e.st.UpdateDevice(ctx, device, func(d *store.Device) ([]store.Event, error) {
		changes = nil
		if d.Revoked {
			return nil, revoked(device)
		}
		s := d.Slot(slot)
		if open := s.Open(); open != nil {
			r = Rotation{Device: device, Slot: slot, Version: open.Version, RID: open.RID, Existing: true}
			return nil, store.ErrNoChange
		}
		k, c, err := lifecycle.Manage(s, device, slot, actor).Request(rid, now)
		if err != nil {
			return nil, err
		}
		changes = c
		r = Rotation{Device: device, Slot: slot, Version: k.Version, RID: rid}
		return events(slot, changes), nil
	})
	if errors.Is(err, ErrRevoked) {
		return Rotation{}, err // says which device already
	} else if err != nil {
		return Rotation{}, fmt.Errorf("rotation: request for %s: %w", device, err)
	}
	if !r.Existing {
		e.stats.Requested.Add(1)
		e.emit(changes)
	}
	v := d.Slot(slot).Version(r.Version)
	if notify && v != nil && v.State == lifecycle.StatePending {
		if err := e.sendRotate(ctx, device, slot, v); err != nil {
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
	cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: device}, PublicKey: pub, CSR: csr.Raw})
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
	ev, err := provisioned(d, cert, kid, actor, now)
	if err != nil {
		return nil, err
	}
	if err := e.st.CreateDevice(ctx, d, ev); err != nil {
		return nil, err
	}
	return cert, nil
}

// provisioned records cert as the first version of d's credential slot and
// returns its audit record. A registration is audited, not reported
// through OnStateChange: a fleet registers thousands at once.
func provisioned(d *store.Device, cert *x509.Certificate, kid []byte, actor string, now time.Time) (store.Event, error) {
	changes, err := lifecycle.Manage(d.Slot(credentialSlot), d.ID, credentialSlot, actor).Provision(credential(cert, kid, false), now)
	if err != nil {
		return store.Event{}, fmt.Errorf("rotation: provision %s: %w", d.ID, err)
	}
	ev := events(credentialSlot, changes)[0]
	ev.Detail = "serial " + cert.SerialNumber.Text(16)
	return ev, nil
}

// ProvisionItem is one device of a batch registration.
type ProvisionItem struct {
	ID  string
	CSR *x509.CertificateRequest
	// BirthCSR asks for a birth credential (IDevID) too; Birth is that
	// credential once issued, which the engine records.
	BirthCSR *x509.CertificateRequest
	Birth    *x509.Certificate
	// Labels and Model are recorded with the device as given (the admin
	// API checks them).
	Labels map[string]string
	Model  string
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
	evs := make([]store.Event, len(items))
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
			cert, err := e.issuer.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: it.ID}, PublicKey: pub, CSR: it.CSR.Raw})
			if err != nil {
				res[i].Err = fmt.Errorf("rotation: provision %s: %w", it.ID, err)
				return
			}
			kid, err := protocol.KeyID(pub)
			if err != nil {
				res[i].Err = err
				return
			}
			d := &store.Device{ID: it.ID, CreatedAt: now, Labels: it.Labels, Model: it.Model}
			if d.Birth, err = birthRecord(it.Birth); err != nil {
				res[i].Err = err
				return
			}
			if evs[i], err = provisioned(d, cert, kid, actor, now); err != nil {
				res[i].Err = err
				return
			}
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
			events = append(events, evs[i])
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
		return refused("%s: role %s", id.Name, id.Role)
	}
	d, err := e.st.GetDevice(ctx, id.Name)
	if errors.Is(err, store.ErrNotExist) {
		return refused("no device %s", id.Name)
	} else if err != nil {
		return fmt.Errorf("rotation: check credential of %s: %w", id.Name, err) // not a refusal
	}
	if d.Revoked {
		e.stats.RevokedConnects.Add(1)
		e.auditRefusal(ctx, id.Name, "connect", "device revoked")
		return revoked(id.Name)
	}
	kid, err := protocol.KeyID(leaf.PublicKey)
	if err != nil {
		return refused("%s: %v", id.Name, err)
	}
	kv := d.Slot(credentialSlot).ByKeyID(kid)
	if kv == nil || kv.Serial != leaf.SerialNumber.Text(16) {
		return refused("%s: unknown certificate", id.Name)
	}
	if !e.accepted(kv, e.now()) {
		return refused("%s: version %d is %v", id.Name, kv.Version, kv.State)
	}
	e.stats.Connects.Add(1)
	if kv.State == lifecycle.StateSuperseded {
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
	return (k.State == lifecycle.StateActive || k.State == lifecycle.StateIssued) &&
		e.opts.Policy.Current().IdentityAccess(k.NotAfter, now) == policy.AccessRenew
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
	l := d.Slot(credentialSlot).Open()
	if l == nil {
		return nil
	}
	e.stats.Resent.Add(1)
	if l.State == lifecycle.StatePending {
		return e.sendRotate(ctx, device, credentialSlot, l)
	}
	return e.sendCert(ctx, device, credentialSlot, l)
}
