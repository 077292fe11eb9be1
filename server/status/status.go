// Package status gathers fleetd's counters from its parts into the one
// answer `fleetctl status` shows: devices by state, rotations, rejections,
// broker refusals, HSM operations, the current anchors and firmware.
//
// # Caveats
//
// Counting devices by state reads every device record: the answer costs
// one pass over the store.
package status

import (
	"context"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Sources are the parts the counters come from. Broker is nil when fleetd
// uses an external broker; every other field is required.
type Sources struct {
	Engine  interface{ Stats() rotation.StatsSnapshot }
	Devices interface {
		ForEachDevice(context.Context, func(*store.Device) error) error
	}
	HSM        interface{ Ops() uint64 }
	Anchors    interface{ AnchorVersion() uint32 }
	Firmware   interface{ CurrentFirmware() (uint32, []byte) }
	Broker     *broker.Embedded
	BrokerAddr string
	// Process gives fleetd's resident memory and goroutines, as the
	// metrics' process and Go collectors read them.
	Process interface {
		Process() (rssBytes uint64, goroutines int)
	}
}

// Status implements admin.Status.
func (s Sources) Status(ctx context.Context) (adminapi.Status, error) {
	st := s.Engine.Stats()
	out := adminapi.Status{ByState: map[string]int{}, Requested: st.Requested, Issued: st.Issued, Activated: st.Activated,
		Retired: st.Retired, Rejected: st.Rejected, HSMOps: s.HSM.Ops(), Broker: s.BrokerAddr,
		Reenrolled: st.Reenrolled, RenewedAfterExpiry: st.RenewedExpired, OldKeyUplinks: st.OldKeyUplinks,
		OldKeyConnects: st.OldKeyConnects, DataKeysSent: st.DataKeysSent, AnchorsVersion: s.Anchors.AnchorVersion()}
	out.FirmwareVersion, _ = s.Firmware.CurrentFirmware()
	out.RSSBytes, out.Goroutines = s.Process.Process()
	if st.Uplinks > 0 {
		out.OldKeyRatio = float64(st.OldKeyUplinks) / float64(st.Uplinks)
	}
	if s.Broker != nil {
		out.BrokerDenials, out.ConnectedClient = s.Broker.Denials.Snapshot(), s.Broker.Connected()
	}
	err := s.Devices.ForEachDevice(ctx, func(d *store.Device) error {
		out.Devices++
		if l := d.Slot(protocol.SlotIdentity).Latest(); l != nil {
			out.ByState[l.State.String()]++
		}
		return nil
	})
	return out, err
}
