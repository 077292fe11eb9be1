package lifecycle

import (
	"fmt"
	"time"
)

// SlotKind names what a Change is about. The identity and data slots are
// per device; anchors and firmware changes are fleet-wide when Device is
// empty and per device when a device reports a new version.
type SlotKind string

// Slot kinds, as printed in logs and on the make run screen.
const (
	SlotIdentity SlotKind = "identity"
	SlotData     SlotKind = "data"
	SlotAnchors  SlotKind = "anchors"
	SlotFirmware SlotKind = "firmware"
)

// Change is one durable state change of one key version, in any slot. It
// is what the transition methods return and what fleetd reports through
// its OnStateChange hook: one readable line per Change on the make run
// screen, one audit record per Change in the store.
type Change struct {
	// Device is the device the change is about; empty for a fleet-wide
	// change (an anchor rotation, a firmware release).
	Device string
	Slot   SlotKind
	// Version is the key (or anchors, or firmware) version that changed.
	Version uint32
	// From and To are the states before and after; From is StateUnknown
	// for a version that did not exist before.
	From, To State
	// RID is the rotation id, when the change belongs to one.
	RID []byte
	// Actor is who asked for it ("admin:NAME", "device", "policy",
	// "grace"); empty when the engine moved on its own.
	Actor string
	// Latency is the time since the rotation was requested, for issued
	// and active; zero otherwise.
	Latency time.Duration
}

// String is the one readable line make run prints for a change.
func (c Change) String() string {
	s := string(c.Slot)
	if c.Device != "" {
		s = c.Device + " " + s
	}
	s += fmt.Sprintf(" v%d %s", c.Version, c.To)
	if c.Latency > 0 {
		s += fmt.Sprintf(" (%s)", c.Latency.Round(time.Millisecond))
	}
	return s
}

// Action is the audit record's action for the change: the verb of the
// move ("requested", "issued", "activated", "superseded", "retired",
// "revoked", "failed", "cancelled"), or "provisioned" for the version
// created active at registration.
func (c Change) Action() string {
	if c.From == StateUnknown && c.To == StateActive {
		return "provisioned"
	}
	return actions[c.To]
}

var actions = map[State]string{
	StatePending: "requested", StateIssued: "issued", StateActive: "activated", StateSuperseded: "superseded",
	StateRetired: "retired", StateRevoked: "revoked", StateFailed: "failed", StateCancelled: "cancelled",
}
