package adminapi

import (
	"strconv"
	"time"
)

// DeviceSummary is one line of `fleetctl devices`.
type DeviceSummary struct {
	ID       string    `json:"id"`
	Revoked  bool      `json:"revoked"`
	Active   uint32    `json:"active"`
	Desired  uint32    `json:"desired"`
	Reported uint32    `json:"reported"`
	State    string    `json:"state"` // state of the latest version
	Created  time.Time `json:"created"`
	// Model and Labels are the device's inventory, which selectors match
	// (the model as the key "model").
	Model  string            `json:"model,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
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

// Device is `fleetctl device show`: every slot of the device.
type Device struct {
	DeviceSummary
	Versions []Version `json:"versions"`
	// DataKeys are the data-key versions, oldest first (never the keys).
	DataKeys []DataKeyVersion `json:"data_keys,omitempty"`
	// Anchors and Firmware are the versions the device last reported;
	// 0: it has reported none.
	Anchors  uint32    `json:"anchors_version"`
	Firmware uint32    `json:"firmware_version"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// FirmwarePin is the staged release a firmware campaign pinned the
	// device to (0: none, the fleet's release); DataPrimary the data-key
	// version the device last reported as its primary (0: none yet).
	FirmwarePin uint32 `json:"firmware_pin,omitempty"`
	DataPrimary uint32 `json:"data_primary_reported,omitempty"`
	// Connection is one of the Connection constants.
	Connection string `json:"connection"`
}

// A device's connection, as fleetd knows it.
const (
	// ConnectionUp: a session of the device is open at the embedded broker.
	ConnectionUp = "connected"
	// ConnectionDown: the embedded broker holds no session of the device.
	ConnectionDown = "disconnected"
	// ConnectionUnknown: fleetd uses an external broker and cannot tell.
	ConnectionUnknown = "unknown"
)

// DataKeyVersion is one data-key version of a device and its status:
// primary, decrypt-only, retired or destroyed.
type DataKeyVersion struct {
	Version   uint32    `json:"version"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
}

// LabelRequest changes a device's labels, as kubectl label does: Set adds
// or replaces, Remove deletes. The key "model" sets or clears the model.
// Keys and values follow Kubernetes' label syntax.
type LabelRequest struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// ProvisionRequest asks for a device's first credential. CSR is PEM.
type ProvisionRequest struct {
	ID  string `json:"id"`
	CSR string `json:"csr"`
	// BirthCSR, if set, asks for a birth credential (IDevID) too, as a
	// factory station would.
	BirthCSR string `json:"birth_csr,omitempty"`
	// Labels and Model are recorded with the device (Kubernetes label
	// syntax; the model is a label value).
	Labels map[string]string `json:"labels,omitempty"`
	Model  string            `json:"model,omitempty"`
}

// ProvisionResponse carries what a device needs to join (all PEM).
type ProvisionResponse struct {
	ID        string `json:"id"`
	Cert      string `json:"cert"`
	CA        string `json:"ca"`
	UpdateKey string `json:"update_key"`
	Broker    string `json:"broker"`
	// Birth is the birth certificate (PEM), when one was asked for.
	Birth string `json:"birth,omitempty"`
	// Anchors is the current signed trust-anchor set.
	Anchors []byte `json:"anchors,omitempty"`
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
	Devices       int               `json:"devices"`
	ByState       map[string]int    `json:"by_state"`
	Requested     uint64            `json:"rotations_requested"`
	Issued        uint64            `json:"certificates_issued"`
	Activated     uint64            `json:"rotations_activated"`
	Retired       uint64            `json:"versions_retired"`
	Rejected      map[string]uint64 `json:"rejected"`
	BrokerDenials map[string]uint64 `json:"broker_denials"`
	HSMOps        uint64            `json:"hsm_ops"`
	// The offline-device counters since fleetd started.
	Reenrolled         uint64  `json:"reenrolled"`
	RenewedAfterExpiry uint64  `json:"renewed_after_expiry"`
	OldKeyUplinks      uint64  `json:"old_key_uplinks"`
	OldKeyConnects     uint64  `json:"old_key_connects"`
	OldKeyRatio        float64 `json:"old_key_ratio"` // old-key uplinks / authenticated uplinks
	DataKeysSent       uint64  `json:"data_keys_sent"`
	AnchorsVersion     uint32  `json:"anchors_version"`
	FirmwareVersion    uint32  `json:"firmware_version"`
	ConnectedClient    int     `json:"connected_clients"`
	Broker             string  `json:"broker"`
	RSSBytes           uint64  `json:"rss_bytes"`
	Goroutines         int     `json:"goroutines"`
}

// AuditVerify is the result of verifying the audit chain.
type AuditVerify struct {
	Records uint64 `json:"records"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	// Head is the hash (hex) of the latest record checked, the one with
	// the highest sequence number, empty for an empty log: an operator
	// notes it to compare with the last line of an export. With one chain
	// (bbolt) it is that chain's head.
	Head string `json:"head,omitempty"`
	// Chains is where each hash chain ends, in chain order: one entry
	// with bbolt, one per chain that holds records with PostgreSQL. A
	// multi-chain export verifies when every chain ends at its entry.
	Chains []AuditChainHead `json:"chains,omitempty"`
}

// AuditChainHead is the last record of one audit hash chain.
type AuditChainHead struct {
	Chain   uint32 `json:"chain"`
	Records uint64 `json:"records"` // records on the chain
	Seq     uint64 `json:"seq"`     // sequence number of its last record
	Head    string `json:"head"`    // hash of its last record, hex
}

// BatchProvisionRequest registers up to MaxBatch devices in one call: how a
// factory line, or the simulator, registers a large fleet. CSRs are DER.
type BatchProvisionRequest struct {
	Devices []BatchDevice `json:"devices"`
}

// BatchDevice is one device of a batch.
type BatchDevice struct {
	ID       string `json:"id"`
	CSR      []byte `json:"csr"`                 // DER, base64 in JSON
	BirthCSR []byte `json:"birth_csr,omitempty"` // DER: ask for a birth credential too
	// Labels and Model are recorded with the device, as in ProvisionRequest.
	Labels map[string]string `json:"labels,omitempty"`
	Model  string            `json:"model,omitempty"`
}

// BatchProvisionResponse carries the trust material once and a result per
// device, in request order.
type BatchProvisionResponse struct {
	Anchors   []byte        `json:"anchors,omitempty"`
	CA        string        `json:"ca"`
	UpdateKey string        `json:"update_key"`
	Broker    string        `json:"broker"`
	Results   []BatchResult `json:"results"`
}

// BatchResult is one device's certificate (DER) or error.
type BatchResult struct {
	ID    string `json:"id"`
	Cert  []byte `json:"cert,omitempty"`
	Birth []byte `json:"birth,omitempty"` // DER birth certificate
	Error string `json:"error,omitempty"`
}

// MaxBatch bounds a batch registration.
const MaxBatch = 1000

// RevokeRequest asks for an emergency revocation.
type RevokeRequest struct {
	Reason string `json:"reason"`
}

// RevokeResponse reports a revocation; TookMS is the time from the request
// to the broker having dropped the device's sessions.
type RevokeResponse struct {
	Device string  `json:"device"`
	TookMS float64 `json:"took_ms"`
}

// AnchorsRotateRequest names the anchor keys to replace: "ca", "update",
// "firmware"; empty means ca and update.
type AnchorsRotateRequest struct {
	Keys []string `json:"keys,omitempty"`
}

// AnchorsInfo describes the current trust-anchor set.
type AnchorsInfo struct {
	Version     uint32    `json:"version"`
	Root        string    `json:"root_subject"`
	RootKeyID   string    `json:"root_kid"`
	UpdateKeyID string    `json:"update_kid"`
	FirmwareKID string    `json:"firmware_kid"`
	IssuedAt    time.Time `json:"issued_at"`
	// Prepared is the version of the set an anchors campaign is rolling
	// out (published when it completes); 0 when none is.
	Prepared uint32 `json:"prepared_version,omitempty"`
}

// DataKeysResponse reports a fleet-wide data-key rotation.
type DataKeysResponse struct {
	Devices int      `json:"devices"`
	Failed  int      `json:"failed"`
	Errors  []string `json:"errors,omitempty"`
}

// EscrowRequest asks for an escrowed data key.
type EscrowRequest struct {
	Device  string `json:"device"`
	Version uint32 `json:"version"`
}

// EscrowResponse carries the key sealed to the requesting operator's
// certificate key (COSE_Encrypt0, HPKE); Audience is the binding to open
// it with.
type EscrowResponse struct {
	Device   string `json:"device"`
	Version  uint32 `json:"version"`
	Status   string `json:"status"`
	Sealed   []byte `json:"sealed"`
	Audience string `json:"audience"`
}

// FirmwareRequest describes a firmware release; the image itself stays
// with the operator and the download service, fleetd signs its manifest.
type FirmwareRequest struct {
	Vendor  string `json:"vendor"` // UUID
	Class   string `json:"class"`  // UUID
	Version uint32 `json:"version"`
	Digest  []byte `json:"digest"` // SHA-256 of the image
	Size    uint64 `json:"size"`
	URI     string `json:"uri"`
	// Staged publishes the release without making it the fleet's: only
	// the devices a firmware campaign naming it reaches get it, and it
	// becomes current when that campaign completes.
	Staged bool `json:"staged,omitempty"`
}

// FirmwareInfo describes the current release.
type FirmwareInfo struct {
	Version  uint32 `json:"version"`
	Manifest []byte `json:"manifest"`
	KeyID    string `json:"kid"`
}

// RecoveryAudience binds an escrowed key released to an operator to the
// device and version asked for (the HPKE info of EscrowResponse.Sealed):
// a client checks it, so a sealed answer cannot be passed off as
// another's.
func RecoveryAudience(device string, version uint32) string {
	return "keyfleet/escrow/" + device + "/" + strconv.FormatUint(uint64(version), 10)
}
