package lifecycle

import "time"

// KeyVersion is one version of a device's key in one slot. The store keeps
// it as it is (store.KeyVersion names this type); its State changes only
// through a Manager.
type KeyVersion struct {
	Version uint32
	// State is set by the Manager's moves only; read it freely.
	State State
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
	// RetiredAt is when the version died: retired, revoked, failed or
	// cancelled.
	RetiredAt time.Time
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
// The store keeps it as it is (store.SlotState names this type).
type SlotState struct {
	// Desired is the version the server wants the device to run.
	Desired uint32
	// Reported is the active version the device last reported.
	Reported uint32
	// Versions holds the live versions and the most recent dead ones,
	// oldest first; see MaxHistory.
	Versions []*KeyVersion
}

// MaxHistory bounds how many dead versions a slot keeps in its record, so
// a device that rotates for years keeps a small record; the audit log
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

// Open returns the version of the rotation in progress (pending or
// issued), or nil.
func (s *SlotState) Open() *KeyVersion {
	if l := s.Latest(); l != nil && l.State.Open() {
		return l
	}
	return nil
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
		if k.State.Dead() {
			dead++
		}
	}
	out := s.Versions[:0]
	for _, k := range s.Versions {
		if dead > MaxHistory && k.State.Dead() {
			dead--
			continue
		}
		out = append(out, k)
	}
	s.Versions = out
}
