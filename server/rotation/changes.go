package rotation

import (
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// credentialSlot is the slot that rotates by CSR: each new version is a
// key the device makes and a certificate the CA issues for it; that key
// signs the device's uplinks and that certificate opens its MQTT session.
// Only the identity rotates so today; the engine's model is per slot, and
// this is the one place that names it.
const credentialSlot = protocol.SlotIdentity

// rotatesByCSR reports whether versions of slot s are requested, enrolled
// and activated through this engine.
func rotatesByCSR(s protocol.Slot) bool { return s == credentialSlot }

// emit reports durable changes: one log line each and the OnStateChange
// hook.
func (e *Engine) emit(changes []lifecycle.Change) {
	for _, c := range changes {
		latency := "-"
		if c.Latency > 0 {
			latency = c.Latency.Round(100 * time.Microsecond).String()
		}
		e.log.Info("key state", "device", c.Device, "slot", string(c.Slot), "version", c.Version,
			"from", c.From.String(), "state", c.To.String(), "rotation", fmt.Sprintf("%x", c.RID), "actor", c.Actor, "latency", latency)
		if e.opts.OnStateChange != nil {
			e.opts.OnStateChange(c)
		}
	}
}

// events are the audit records of changes to slot: one per change, with
// the move's action (lifecycle.Change.Action).
func events(slot protocol.Slot, changes []lifecycle.Change) []store.Event {
	out := make([]store.Event, len(changes))
	for i, c := range changes {
		out[i] = store.Event{Action: c.Action(), Device: c.Device, Slot: uint8(slot), Version: c.Version, RID: c.RID, Actor: c.Actor}
	}
	return out
}
