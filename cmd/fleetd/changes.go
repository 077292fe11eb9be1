package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// changePrinter writes one readable line per key state change, for a
// person watching fleetd (fleetd run --print-changes, as make run does):
// "07:51:02 dev-01 identity v3 active (152ms)". Changes come from many
// goroutines; each line is written whole.
type changePrinter struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

func (p *changePrinter) print(c lifecycle.Change) {
	line := p.now().Format(time.TimeOnly) + " " + c.String() + "\n"
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.w, line)
}

// lifecycleChange reads the rotation engine's change as the lifecycle
// change every slot reports; the two state enumerations share their
// numbers.
func lifecycleChange(c rotation.StateChange) lifecycle.Change {
	slot := lifecycle.SlotKind(fmt.Sprintf("slot(%d)", c.Slot))
	switch c.Slot {
	case protocol.SlotIdentity:
		slot = lifecycle.SlotIdentity
	case protocol.SlotData:
		slot = lifecycle.SlotData
	}
	return lifecycle.Change{Device: c.Device, Slot: slot, Version: c.Version, To: lifecycle.State(c.State),
		RID: c.RID, Latency: c.Latency}
}
