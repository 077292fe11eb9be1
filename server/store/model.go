package store

import (
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
)

// KeyVersion is one version of a device's key in one slot. The type and
// its states live in package lifecycle, whose Manager is the only code that
// changes a version's state; the store keeps it as it is.
type KeyVersion = lifecycle.KeyVersion

// SlotState is the desired and reported state of one slot of a device
// (lifecycle.SlotState).
type SlotState = lifecycle.SlotState

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
	// DataPrimary is the data-key version the device last reported as
	// its primary (0: never reported): how the server knows a device
	// took a new primary, or went back to an older one.
	DataPrimary uint32 `cbor:",omitempty"`
	// FirmwarePin is the release this device should run while a
	// firmware campaign stages one (0: the fleet's current release). It
	// counts only while newer than the current release, so a release
	// published for the whole fleet later overtakes it.
	FirmwarePin uint32 `cbor:",omitempty"`
	// Labels are the operator's key=value tags (Kubernetes label syntax,
	// checked by package inventory), which selectors match. A record
	// written before labels existed decodes with none.
	Labels map[string]string `cbor:",omitempty"`
	// Model is the device's model or class; selectors match it as the
	// label-like key "model". Empty: not recorded.
	Model string `cbor:",omitempty"`
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
