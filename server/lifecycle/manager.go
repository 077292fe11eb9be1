package lifecycle

import (
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// KindOf names a device slot of the wire protocol.
func KindOf(s protocol.Slot) SlotKind { return SlotKind(s.String()) }

// Credential is what issuing a version records: the certificate and what
// identifies it.
type Credential struct {
	Cert     []byte // DER
	KeyID    []byte // protocol.KeyID of the certified key
	Serial   string // hex
	NotAfter time.Time
	// Reenrolled marks a credential issued to the device's birth
	// credential rather than requested with its previous identity key.
	Reenrolled bool
}

// Manager moves the key versions of one slot of one device, the way Tink's
// keyset.Manager changes a keyset: each method is one legal move (see
// Legal), refuses an illegal one with a *MoveError (ErrIllegalMove) and
// leaves the slot unchanged when it fails, and returns the Changes it
// made, which the caller audits and reports once it has stored the slot.
//
// A Manager works on the record in memory; use it inside the store
// transaction that writes the record. It is not safe for concurrent use.
type Manager struct {
	device string
	slot   SlotKind
	actor  string
	s      *SlotState
}

// Manage returns the Manager of slot s of device; the Changes it returns
// name actor as who asked for them.
func Manage(s *SlotState, device string, slot protocol.Slot, actor string) *Manager {
	return &Manager{device: device, slot: KindOf(slot), actor: actor, s: s}
}

// change records the move of k to state to and returns its Change.
func (m *Manager) change(k *KeyVersion, to State, latency time.Duration) Change {
	c := Change{Device: m.device, Slot: m.slot, Version: k.Version, From: k.State, To: to, RID: k.RID,
		Actor: m.actor, Latency: latency}
	k.State = to
	return c
}

// find returns version v, checked to be allowed to move to state to.
func (m *Manager) find(v uint32, to State) (*KeyVersion, error) {
	k := m.s.Version(v)
	if k == nil {
		return nil, fmt.Errorf("%w: %s %s v%d", ErrUnknownVersion, m.device, m.slot, v)
	}
	if !Legal(k.State, to) {
		return nil, &MoveError{Device: m.device, Slot: m.slot, Version: v, From: k.State, To: to}
	}
	return k, nil
}

// Provision records the credential given at registration as version 1,
// active at once: the device made the key and holds the certificate before
// it ever connects. Only an empty slot can be provisioned.
func (m *Manager) Provision(c Credential, at time.Time) ([]Change, error) {
	if len(m.s.Versions) > 0 {
		return nil, &MoveError{Device: m.device, Slot: m.slot, Version: 1, From: m.s.Versions[0].State, To: StateActive}
	}
	k := &KeyVersion{Version: 1, RequestedAt: at, IssuedAt: at, ActivatedAt: at}
	setCredential(k, c)
	m.s.Versions = append(m.s.Versions, k)
	m.s.Desired, m.s.Reported = 1, 1
	return []Change{m.change(k, StateActive, 0)}, nil
}

// Request opens a rotation: a new version, one above every version the
// slot has held, pending until the device enrols a key for it, and
// desired from now on. A slot has at most one open rotation
// (ErrRotationOpen, and Open returns it).
func (m *Manager) Request(rid []byte, at time.Time) (*KeyVersion, []Change, error) {
	if o := m.s.Open(); o != nil {
		return nil, nil, fmt.Errorf("%w: %s %s v%d is %v", ErrRotationOpen, m.device, m.slot, o.Version, o.State)
	}
	next := uint32(1)
	if l := m.s.Latest(); l != nil {
		next = l.Version + 1
	}
	k := &KeyVersion{Version: next, RID: rid, RequestedAt: at}
	m.s.Versions = append(m.s.Versions, k)
	m.s.Desired = next
	return k, []Change{m.change(k, StatePending, 0)}, nil
}

func setCredential(k *KeyVersion, c Credential) {
	k.Cert, k.KeyID, k.Serial, k.NotAfter, k.Reenrolled = c.Cert, c.KeyID, c.Serial, c.NotAfter, c.Reenrolled
}

// Issue records the certificate issued for pending version v, enrolled by
// the message enrollID: the device may now switch to it.
func (m *Manager) Issue(v uint32, c Credential, enrollID []byte, at time.Time) ([]Change, error) {
	k, err := m.find(v, StateIssued)
	if err != nil {
		return nil, err
	}
	setCredential(k, c)
	k.EnrollID, k.IssuedAt = enrollID, at
	return []Change{m.change(k, StateIssued, at.Sub(k.RequestedAt))}, nil
}

// Activate makes issued version v the active one, as the device proved by
// message msgID (empty when the proof was a hello), and supersedes the
// version active until then: it stays accepted until graceUntil.
func (m *Manager) Activate(v uint32, msgID []byte, at, graceUntil time.Time) ([]Change, error) {
	k, err := m.find(v, StateActive)
	if err != nil {
		return nil, err
	}
	var out []Change
	for _, o := range m.s.Versions {
		if o.State == StateActive {
			c, err := m.Supersede(o.Version, graceUntil)
			if err != nil {
				return nil, err // cannot happen: active may always be superseded
			}
			c[0].RID = k.RID // the rotation that replaced it
			out = append(out, c...)
		}
	}
	k.ActivatedAt, k.ActivatedID = at, msgID
	return append(out, m.change(k, StateActive, at.Sub(k.RequestedAt))), nil
}

// Supersede moves active version v aside: still accepted until
// graceUntil, so that messages and sessions in flight under it finish.
func (m *Manager) Supersede(v uint32, graceUntil time.Time) ([]Change, error) {
	k, err := m.find(v, StateSuperseded)
	if err != nil {
		return nil, err
	}
	k.GraceUntil = graceUntil
	return []Change{m.change(k, StateSuperseded, 0)}, nil
}

// Retire ends superseded version v's grace: refused from now on. The
// caller decides when the grace is over.
func (m *Manager) Retire(v uint32, at time.Time) ([]Change, error) {
	return m.end(v, StateRetired, at)
}

// Revoke refuses live version v at once.
func (m *Manager) Revoke(v uint32, at time.Time) ([]Change, error) {
	return m.end(v, StateRevoked, at)
}

// RevokeAll revokes every live version of the slot: what revoking a device
// does to each of its slots.
func (m *Manager) RevokeAll(at time.Time) []Change {
	var out []Change
	for _, k := range m.s.Versions {
		if k.State.Live() {
			c, _ := m.end(k.Version, StateRevoked, at) // every live state may be revoked
			out = append(out, c...)
		}
	}
	return out
}

// Fail ends open version v's rotation as failed: it never activates.
func (m *Manager) Fail(v uint32, at time.Time) ([]Change, error) {
	return m.end(v, StateFailed, at)
}

// Cancel ends open version v's rotation as cancelled: it never activates.
func (m *Manager) Cancel(v uint32, at time.Time) ([]Change, error) {
	return m.end(v, StateCancelled, at)
}

// end moves version v to the dead state to.
func (m *Manager) end(v uint32, to State, at time.Time) ([]Change, error) {
	k, err := m.find(v, to)
	if err != nil {
		return nil, err
	}
	k.RetiredAt = at
	return []Change{m.change(k, to, 0)}, nil
}
