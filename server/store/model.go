package store

import (
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// KeyState is the life-cycle state of one key version. The zero value is
// invalid, so a record that lost its state is caught.
type KeyState uint8

// Key states, in life-cycle order:
// pending -> issued -> active -> superseded -> retired, with revoked reachable
// from any state before retired.
const (
	StateUnknown    KeyState = 0
	StatePending    KeyState = 1 // rotation requested; the device has not enrolled yet
	StateIssued     KeyState = 2 // certificate issued; the device has not confirmed
	StateActive     KeyState = 3 // the device confirmed; the version in use
	StateSuperseded KeyState = 4 // replaced, still accepted until GraceUntil
	StateRetired    KeyState = 5 // grace over: refused at the broker
	StateRevoked    KeyState = 6 // refused at once by operator decision
)

var stateNames = [...]string{"unknown", "pending", "issued", "active", "superseded", "retired", "revoked"}

func (s KeyState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// KeyVersion is one version of a device's key in one slot.
type KeyVersion struct {
	Version uint32
	State   KeyState
	// RID is the rotation id that created this version (empty for the
	// provisioning credential).
	RID []byte
	// Cert is the issued certificate (DER); empty while pending.
	Cert []byte
	// KeyID is protocol.KeyID of the certified public key.
	KeyID []byte
	// Serial is the certificate serial number, hex.
	Serial   string
	NotAfter time.Time
	// GraceUntil is when a superseded version stops being accepted.
	GraceUntil time.Time
	// EnrollID and ActivatedID are the message ids that moved this version
	// to issued and active; a second message with the same id is a replay.
	EnrollID    []byte
	ActivatedID []byte
	// Reenrolled marks a version issued to the birth credential rather
	// than requested with the previous identity key.
	Reenrolled bool

	RequestedAt time.Time
	IssuedAt    time.Time
	ActivatedAt time.Time
	RetiredAt   time.Time
}

// Accepted reports whether a credential of this version may authenticate
// at time now.
func (k *KeyVersion) Accepted(now time.Time) bool {
	switch k.State {
	case StateIssued, StateActive:
		return now.Before(k.NotAfter)
	case StateSuperseded:
		return now.Before(k.GraceUntil) && now.Before(k.NotAfter)
	}
	return false
}

// SlotState is the desired and reported state of one slot of a device.
type SlotState struct {
	// Desired is the version the server wants the device to run.
	Desired uint32
	// Reported is the active version the device last reported.
	Reported uint32
	// Versions holds the live versions and the most recent dead ones,
	// oldest first; see MaxHistory.
	Versions []*KeyVersion
}

// MaxHistory bounds how many retired versions a slot keeps in its record,
// so a device that rotates for years keeps a small record; the audit log
// keeps the full history.
const MaxHistory = 4

// Version returns the version numbered v, or nil.
func (s *SlotState) Version(v uint32) *KeyVersion {
	for _, k := range s.Versions {
		if k.Version == v {
			return k
		}
	}
	return nil
}

// Latest returns the highest version, or nil.
func (s *SlotState) Latest() *KeyVersion {
	if len(s.Versions) == 0 {
		return nil
	}
	return s.Versions[len(s.Versions)-1]
}

// Active returns the active version, or nil.
func (s *SlotState) Active() *KeyVersion {
	for i := len(s.Versions) - 1; i >= 0; i-- {
		if s.Versions[i].State == StateActive {
			return s.Versions[i]
		}
	}
	return nil
}

// ByKeyID returns the version whose key has the given id, or nil.
func (s *SlotState) ByKeyID(kid []byte) *KeyVersion {
	for _, k := range s.Versions {
		if string(k.KeyID) == string(kid) {
			return k
		}
	}
	return nil
}

// Prune drops the oldest dead versions beyond MaxHistory.
func (s *SlotState) Prune() {
	dead := 0
	for _, k := range s.Versions {
		if k.State == StateRetired || k.State == StateRevoked {
			dead++
		}
	}
	out := s.Versions[:0]
	for _, k := range s.Versions {
		if dead > MaxHistory && (k.State == StateRetired || k.State == StateRevoked) {
			dead--
			continue
		}
		out = append(out, k)
	}
	s.Versions = out
}

// Device is the server's record of one device.
type Device struct {
	ID        string
	CreatedAt time.Time
	// Revoked devices are refused at the broker and by the engine, at
	// every step: connect, re-enrolment, key delivery.
	Revoked   bool
	RevokedAt time.Time
	LastSeen  time.Time
	Slots     map[protocol.Slot]*SlotState
	// Birth is the device's birth credential (IDevID), if it has one.
	Birth *BirthCredential
	// DataKeys are the device's data-key versions, oldest first: the
	// escrow. Destroyed versions keep their number and lose their key.
	DataKeys []*DataKey
	// Anchors and Firmware are the versions the device last reported.
	Anchors  uint32
	Firmware uint32
}

// BirthCredential records a device's IDevID: what the server needs to
// recognise it at re-enrolment.
type BirthCredential struct {
	Cert   []byte // DER
	KeyID  []byte // protocol.KeyID of its public key
	Serial string // hex
}

// DataKeyStatus is the state of one data-key version (Tink's KeyStatus).
// The zero value is invalid.
type DataKeyStatus uint8

// Data-key statuses, in life-cycle order.
const (
	DataKeyUnknown     DataKeyStatus = 0
	DataKeyPrimary     DataKeyStatus = 1 // encrypts; exactly one per device
	DataKeyDecryptOnly DataKeyStatus = 2 // decrypts older data
	DataKeyRetired     DataKeyStatus = 3 // devices delete it; escrow keeps it
	DataKeyDestroyed   DataKeyStatus = 4 // escrow wiped: gone for good
)

var dataKeyNames = [...]string{"unknown", "primary", "decrypt-only", "retired", "destroyed"}

func (s DataKeyStatus) String() string {
	if int(s) < len(dataKeyNames) {
		return dataKeyNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// DataKey is one escrowed data-key version of a device.
type DataKey struct {
	Version uint32
	Status  DataKeyStatus
	// Wrapped is the key wrapped under the HSM-resident KEK (RFC 5649);
	// nil once destroyed. The plaintext is never stored.
	Wrapped   []byte
	KEK       string // label of the wrapping key
	CreatedAt time.Time
	RetiredAt time.Time
}

// DataKey returns version v, or nil.
func (d *Device) DataKey(v uint32) *DataKey {
	for _, k := range d.DataKeys {
		if k.Version == v {
			return k
		}
	}
	return nil
}

// Slot returns the state of slot s, creating it if absent.
func (d *Device) Slot(s protocol.Slot) *SlotState {
	if d.Slots == nil {
		d.Slots = map[protocol.Slot]*SlotState{}
	}
	st := d.Slots[s]
	if st == nil {
		st = &SlotState{}
		d.Slots[s] = st
	}
	return st
}
