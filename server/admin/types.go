package admin

import "time"

// DeviceSummary is one line of `fleetctl devices`.
type DeviceSummary struct {
	ID       string    `json:"id"`
	Revoked  bool      `json:"revoked"`
	Active   uint32    `json:"active"`
	Desired  uint32    `json:"desired"`
	Reported uint32    `json:"reported"`
	State    string    `json:"state"` // state of the latest version
	Created  time.Time `json:"created"`
}

// Version is one key version of a device.
type Version struct {
	Slot        string    `json:"slot"`
	Version     uint32    `json:"version"`
	State       string    `json:"state"`
	RotationID  string    `json:"rotation_id,omitempty"`
	Serial      string    `json:"serial,omitempty"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	GraceUntil  time.Time `json:"grace_until,omitzero"`
	RequestedAt time.Time `json:"requested_at,omitzero"`
	IssuedAt    time.Time `json:"issued_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
}

// Device is `fleetctl device show`.
type Device struct {
	DeviceSummary
	Versions []Version `json:"versions"`
}

// ProvisionRequest asks for a device's first credential. CSR is PEM.
type ProvisionRequest struct {
	ID  string `json:"id"`
	CSR string `json:"csr"`
}

// ProvisionResponse carries what a device needs to join (all PEM).
type ProvisionResponse struct {
	ID        string `json:"id"`
	Cert      string `json:"cert"`
	CA        string `json:"ca"`
	UpdateKey string `json:"update_key"`
	Broker    string `json:"broker"`
}

// RotateRequest names devices, or all of them.
type RotateRequest struct {
	Devices []string `json:"devices,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// Rotation is one requested rotation.
type Rotation struct {
	Device     string `json:"device"`
	Slot       string `json:"slot"`
	Version    uint32 `json:"version"`
	RotationID string `json:"rotation_id"`
	Existing   bool   `json:"existing"`
	Error      string `json:"error,omitempty"`
}

// RotateResponse lists the rotations.
type RotateResponse struct {
	Rotations []Rotation `json:"rotations"`
}

// Status is `fleetctl status`.
type Status struct {
	Devices         int               `json:"devices"`
	ByState         map[string]int    `json:"by_state"`
	Requested       uint64            `json:"rotations_requested"`
	Issued          uint64            `json:"certificates_issued"`
	Activated       uint64            `json:"rotations_activated"`
	Retired         uint64            `json:"versions_retired"`
	Rejected        map[string]uint64 `json:"rejected"`
	BrokerDenials   map[string]uint64 `json:"broker_denials"`
	HSMOps          uint64            `json:"hsm_ops"`
	ConnectedClient int               `json:"connected_clients"`
	Broker          string            `json:"broker"`
	RSSBytes        uint64            `json:"rss_bytes"`
	Goroutines      int               `json:"goroutines"`
}

// AuditVerify is the result of verifying the audit chain.
type AuditVerify struct {
	Records uint64 `json:"records"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
}

// BatchProvisionRequest registers up to MaxBatch devices in one call: how a
// factory line, or the simulator, registers a large fleet. CSRs are DER.
type BatchProvisionRequest struct {
	Devices []BatchDevice `json:"devices"`
}

// BatchDevice is one device of a batch.
type BatchDevice struct {
	ID  string `json:"id"`
	CSR []byte `json:"csr"` // DER, base64 in JSON
}

// BatchProvisionResponse carries the trust material once and a result per
// device, in request order.
type BatchProvisionResponse struct {
	CA        string        `json:"ca"`
	UpdateKey string        `json:"update_key"`
	Broker    string        `json:"broker"`
	Results   []BatchResult `json:"results"`
}

// BatchResult is one device's certificate (DER) or error.
type BatchResult struct {
	ID    string `json:"id"`
	Cert  []byte `json:"cert,omitempty"`
	Error string `json:"error,omitempty"`
}

// MaxBatch bounds a batch registration.
const MaxBatch = 1000
