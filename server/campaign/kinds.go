package campaign

import (
	"context"

	"github.com/keyfleet/keyfleet/server/store"
)

// Parts are what the kinds fleetd runs change devices through; Kinds
// builds them, so that fleetd's wiring names the parts once.
type Parts struct {
	// Engine is the rotation engine: it rotates identities, pushes data
	// keys and pins firmware.
	Engine interface {
		Rotator
		DataKeyPusher
		FirmwarePinner
	}
	Escrow   DataKeyEscrow
	Releases FirmwareReleases
	// Trust rolls anchor sets out; Devices reads the devices' reports.
	Trust   AnchorRollout
	Devices interface {
		GetDevice(ctx context.Context, id string) (*store.Device, error)
	}
}

// Kinds returns every kind of change fleetd runs campaigns for, by name.
func Kinds(p Parts) map[string]Kind {
	return map[string]Kind{
		KindIdentity: Identity{Engine: p.Engine},
		KindDataKey:  DataKey{Escrow: p.Escrow, Engine: p.Engine},
		KindFirmware: Firmware{Releases: p.Releases, Engine: p.Engine},
		KindAnchors:  Anchors{Trust: p.Trust, Devices: p.Devices},
	}
}
