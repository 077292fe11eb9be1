package protocol

import (
	"crypto/rand"
	"fmt"
	"time"
)

// Type identifies a message kind. The zero value is invalid so that a
// missing type field is caught, never read as a real kind.
type Type uint8

// Message types. Values are wire constants: never renumber, only add.
const (
	TypeUnknown    Type = 0
	TypeHello      Type = 1  // device -> server: versions of every slot
	TypeRotate     Type = 2  // server -> device: make a new key for a slot
	TypeEnroll     Type = 3  // device -> server: CSR for the new key
	TypeCert       Type = 4  // server -> device: the issued certificate
	TypeActivated  Type = 5  // device -> server: the new key is in use
	TypeRetire     Type = 6  // server -> device: drop an old version
	TypeError      Type = 7  // either way: a request was refused
	TypeDelegation Type = 8  // server -> devices: online signing key, certified by the update key
	TypeKey        Type = 9  // server -> device: a data key, sealed to the device's identity key
	TypeReenroll   Type = 10 // device -> server: CSR signed with the birth credential (IDevID)
	TypeAnchors    Type = 11 // server -> device: trust-anchor sets, each signed by its predecessor
	TypeFirmware   Type = 12 // server -> device: a signed firmware manifest
)

var typeNames = map[Type]string{
	TypeHello: "hello", TypeRotate: "rotate", TypeEnroll: "enroll", TypeCert: "cert",
	TypeActivated: "activated", TypeRetire: "retire", TypeError: "error", TypeDelegation: "delegation",
	TypeKey: "key", TypeReenroll: "reenroll", TypeAnchors: "anchors", TypeFirmware: "firmware",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Slot names a key a device holds. Zero is invalid.
type Slot uint8

// Slots. Wire constants.
const (
	SlotUnknown  Slot = 0
	SlotIdentity Slot = 1 // the LDevID: P-256 key + certificate for mTLS and uplink signatures
	SlotData     Slot = 2 // data keys: symmetric, made in the HSM, escrowed by the server
)

func (s Slot) String() string {
	switch s {
	case SlotIdentity:
		return "identity"
	case SlotData:
		return "data"
	default:
		return fmt.Sprintf("slot(%d)", uint8(s))
	}
}

// ErrorCode is the reason carried by an error message.
type ErrorCode uint16

// Error codes. Wire constants.
const (
	CodeUnknown        ErrorCode = 0
	CodeMalformed      ErrorCode = 1
	CodeBadSignature   ErrorCode = 2
	CodeReplay         ErrorCode = 3
	CodeExpired        ErrorCode = 4
	CodeUnknownVersion ErrorCode = 5
	CodeBadCSR         ErrorCode = 6
	CodeRevoked        ErrorCode = 7
	CodeInternal       ErrorCode = 8
	CodeNoRotation     ErrorCode = 9
	CodeUnknownDevice  ErrorCode = 10
	CodeNotCurrentKey  ErrorCode = 11 // signed by a key version that is not the active one
)

// Header is the common part of every message (CBOR keys 1-6).
type Header struct {
	V    uint8  `cbor:"1,keyasint"`
	Type Type   `cbor:"2,keyasint"`
	ID   []byte `cbor:"3,keyasint"`           // message id, MessageIDSize random bytes
	RID  []byte `cbor:"4,keyasint,omitempty"` // rotation id the message belongs to
	IAT  uint64 `cbor:"5,keyasint,omitempty"` // issued at, Unix seconds
	Exp  uint64 `cbor:"6,keyasint,omitempty"` // expiry of a command, Unix seconds
}

// Hdr returns the header; it lets any message be handled generically.
func (h *Header) Hdr() *Header { return h }

// Message is implemented by every message type.
type Message interface {
	Hdr() *Header
	// validate checks the fields the type requires beyond the CBOR schema.
	validate() error
}

// SlotVersion reports the versions a device holds in one slot.
type SlotVersion struct {
	Slot    Slot   `cbor:"1,keyasint"`
	Active  uint32 `cbor:"2,keyasint"`
	Pending uint32 `cbor:"3,keyasint,omitempty"`
	// Previous is the superseded version the device still keeps until the
	// server sends Retire for it.
	Previous uint32 `cbor:"4,keyasint,omitempty"`
}

// Hello is sent by a device on every connect: what it runs now. The server
// answers with whatever steps take the device to its desired state.
type Hello struct {
	Header
	Slots []SlotVersion `cbor:"10,keyasint"`
	// Delegation is the key id of the online-key delegation the device
	// holds; the server sends its current one when they differ.
	Delegation []byte `cbor:"11,keyasint,omitempty"`
	// Anchors is the version of the trust-anchor set the device holds; the
	// server sends the sets that follow it when it is behind.
	Anchors uint32 `cbor:"12,keyasint,omitempty"`
	// DataKeys lists the data-key versions the device holds, so the server
	// can send those it still needs and retire those it must drop.
	DataKeys []uint32 `cbor:"13,keyasint,omitempty"`
	// Firmware is the version of the firmware the device runs; absent
	// (0) for a device that takes no firmware updates.
	Firmware uint32 `cbor:"14,keyasint,omitempty"`
	// DataPrimary is the data-key version the device encrypts with, so
	// the server knows it took a new primary (or went back to an older
	// one after a rollback); absent (0) while it holds no data key.
	DataPrimary uint32 `cbor:"25,keyasint,omitempty"`
}

// Rotate asks a device to generate a new key for Slot, to become Version.
type Rotate struct {
	Header
	Slot    Slot   `cbor:"10,keyasint"`
	Version uint32 `cbor:"11,keyasint"`
}

// Enroll carries a PKCS#10 CSR (DER) signed by the new key; the envelope is
// signed by the device's current identity key, which proves that the holder
// of the old credential asked for the new one.
type Enroll struct {
	Header
	Slot    Slot   `cbor:"10,keyasint"`
	Version uint32 `cbor:"11,keyasint"`
	CSR     []byte `cbor:"12,keyasint"`
}

// Cert delivers the certificate issued for an enroll. On the wire Cert is
// the DER leaf without its SubjectPublicKeyInfo (see CompactLeaf): the
// sender may set the full certificate, which Marshal compacts; a received
// Cert holds the compact leaf, which the device expands with its pending
// key (ExpandLeaf) before checking it.
type Cert struct {
	Header
	Slot    Slot   `cbor:"10,keyasint"`
	Version uint32 `cbor:"11,keyasint"`
	Cert    []byte `cbor:"13,keyasint"`
}

// Activated confirms that the device connected with the new credential. It
// is signed with the new key.
type Activated struct {
	Header
	Slot    Slot   `cbor:"10,keyasint"`
	Version uint32 `cbor:"11,keyasint"`
}

// Retire tells a device it may delete an old version of a slot.
type Retire struct {
	Header
	Slot    Slot   `cbor:"10,keyasint"`
	Version uint32 `cbor:"11,keyasint"`
}

// Error reports a refused request.
type Error struct {
	Header
	Code   ErrorCode `cbor:"14,keyasint"`
	Ref    []byte    `cbor:"15,keyasint,omitempty"` // id of the message refused
	Detail string    `cbor:"16,keyasint,omitempty"` // short human text, never secrets
}

// Delegation certifies the server's short-lived online signing key with the
// HSM-held update key, as TLS delegated credentials (RFC 9345) do: the hot
// path signs with the online key and never waits on the HSM.
type Delegation struct {
	Header
	Key       []byte `cbor:"17,keyasint"` // PKIX SubjectPublicKeyInfo (DER) of the online key
	NotBefore uint64 `cbor:"18,keyasint"` // Unix seconds
	NotAfter  uint64 `cbor:"19,keyasint"` // Unix seconds
}

// KeyStatus says what a device may do with a data key version.
type KeyStatus uint8

// Data-key statuses. Wire constants; zero is invalid.
const (
	KeyStatusUnknown     KeyStatus = 0
	KeyStatusPrimary     KeyStatus = 1 // encrypt and decrypt
	KeyStatusDecryptOnly KeyStatus = 2 // decrypt what older versions wrote
)

// Key delivers one data-key version, sealed with HPKE to the device's
// current identity key (COSE_Encrypt0, see SealEncrypt0), so that neither
// the broker nor anyone but the device reads it.
type Key struct {
	Header
	Slot    Slot      `cbor:"10,keyasint"`
	Version uint32    `cbor:"11,keyasint"`
	Status  KeyStatus `cbor:"20,keyasint"`
	Sealed  []byte    `cbor:"21,keyasint"`
}

// Reenroll is sent on the re-enrolment topic by a device that holds no
// accepted identity any more (it was away past every window). It is signed
// with the device's birth credential (IDevID) and carries a CSR for a new
// identity key; the server picks the version.
type Reenroll struct {
	Header
	CSR []byte `cbor:"12,keyasint"`
	// Anchors is the trust-anchor version the device holds, so the answer
	// can bring it up to date before the certificate, which it verifies
	// against the newest root.
	Anchors uint32 `cbor:"22,keyasint,omitempty"`
}

// Anchors carries consecutive signed trust-anchor sets, oldest first, each
// signed by the keys of the one before (package anchors). It travels bare:
// every set carries its own signatures.
type Anchors struct {
	Header
	Sets [][]byte `cbor:"23,keyasint"`
}

// MaxChainSets bounds the sets one Anchors message carries, and so the
// steps a device takes on one message: a device further behind reports the
// version it reached and gets the next sets. It keeps the message under
// MaxPacketSize (a set is about 800 bytes).
const MaxChainSets = 4

// Firmware offers a signed firmware manifest (package firmware). It travels
// bare: the manifest is signed by the firmware-signing key of the anchors.
type Firmware struct {
	Header
	Manifest []byte `cbor:"24,keyasint"`
}

// MaxDetailLen bounds Error.Detail.
const MaxDetailLen = 200

func needID(h *Header) error {
	if len(h.ID) != MessageIDSize {
		return fmt.Errorf("%w: message id", ErrMissingField)
	}
	if len(h.RID) != 0 && len(h.RID) != MessageIDSize {
		return fmt.Errorf("%w: rotation id length %d", ErrMalformed, len(h.RID))
	}
	return nil
}

func needRID(h *Header) error {
	if len(h.RID) != MessageIDSize {
		return fmt.Errorf("%w: rotation id", ErrMissingField)
	}
	return nil
}

func needSlotVersion(s Slot, v uint32) error {
	if s == SlotUnknown {
		return fmt.Errorf("%w: slot", ErrMissingField)
	}
	if v == 0 {
		return fmt.Errorf("%w: version", ErrMissingField)
	}
	return nil
}

func needUplink(h *Header) error {
	if h.IAT == 0 {
		return fmt.Errorf("%w: issued-at", ErrMissingField)
	}
	return nil
}

func needCommand(h *Header) error {
	if h.Exp == 0 {
		return fmt.Errorf("%w: expiry", ErrMissingField)
	}
	return nil
}

func (m *Hello) validate() error {
	if err := needID(&m.Header); err != nil {
		return err
	}
	if len(m.Delegation) != 0 && len(m.Delegation) != KeyIDSize {
		return fmt.Errorf("%w: delegation key id length %d", ErrMalformed, len(m.Delegation))
	}
	seen := map[Slot]bool{}
	for _, s := range m.Slots {
		if s.Slot == SlotUnknown {
			return fmt.Errorf("%w: slot", ErrMissingField)
		}
		if seen[s.Slot] {
			return fmt.Errorf("%w: slot %v reported twice", ErrMalformed, s.Slot)
		}
		seen[s.Slot] = true
	}
	return needUplink(&m.Header)
}

func (m *Rotate) validate() error {
	return first(needID(&m.Header), needRID(&m.Header), needCommand(&m.Header), needSlotVersion(m.Slot, m.Version))
}

func (m *Enroll) validate() error {
	if len(m.CSR) == 0 {
		return fmt.Errorf("%w: csr", ErrMissingField)
	}
	return first(needID(&m.Header), needRID(&m.Header), needUplink(&m.Header), needSlotVersion(m.Slot, m.Version))
}

func (m *Cert) validate() error {
	if len(m.Cert) == 0 {
		return fmt.Errorf("%w: cert", ErrMissingField)
	}
	return first(needID(&m.Header), needRID(&m.Header), needSlotVersion(m.Slot, m.Version), checkNotFullLeaf(m.Cert))
}

func (m *Activated) validate() error {
	return first(needID(&m.Header), needRID(&m.Header), needUplink(&m.Header), needSlotVersion(m.Slot, m.Version))
}

func (m *Retire) validate() error {
	return first(needID(&m.Header), needCommand(&m.Header), needSlotVersion(m.Slot, m.Version))
}

func (m *Error) validate() error {
	if m.Code == CodeUnknown {
		return fmt.Errorf("%w: error code", ErrMissingField)
	}
	if len(m.Detail) > MaxDetailLen {
		return fmt.Errorf("%w: detail longer than %d", ErrMalformed, MaxDetailLen)
	}
	return needID(&m.Header)
}

func (m *Delegation) validate() error {
	if len(m.Key) == 0 {
		return fmt.Errorf("%w: key", ErrMissingField)
	}
	if m.NotBefore == 0 || m.NotAfter <= m.NotBefore {
		return fmt.Errorf("%w: validity", ErrMalformed)
	}
	return needID(&m.Header)
}

func (m *Key) validate() error {
	if m.Status != KeyStatusPrimary && m.Status != KeyStatusDecryptOnly {
		return fmt.Errorf("%w: key status %d", ErrMalformed, m.Status)
	}
	if len(m.Sealed) == 0 {
		return fmt.Errorf("%w: sealed key", ErrMissingField)
	}
	return first(needID(&m.Header), needCommand(&m.Header), needSlotVersion(m.Slot, m.Version))
}

func (m *Reenroll) validate() error {
	if len(m.CSR) == 0 {
		return fmt.Errorf("%w: csr", ErrMissingField)
	}
	return first(needID(&m.Header), needRID(&m.Header), needUplink(&m.Header))
}

func (m *Anchors) validate() error {
	if len(m.Sets) == 0 {
		return fmt.Errorf("%w: anchor sets", ErrMissingField)
	}
	for _, s := range m.Sets {
		if len(s) == 0 {
			return fmt.Errorf("%w: empty anchor set", ErrMalformed)
		}
	}
	return needID(&m.Header)
}

func (m *Firmware) validate() error {
	if len(m.Manifest) == 0 {
		return fmt.Errorf("%w: manifest", ErrMissingField)
	}
	return needID(&m.Header)
}

func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// newMessage returns an empty message of type t.
func newMessage(t Type) (Message, error) {
	switch t {
	case TypeHello:
		return &Hello{}, nil
	case TypeRotate:
		return &Rotate{}, nil
	case TypeEnroll:
		return &Enroll{}, nil
	case TypeCert:
		return &Cert{}, nil
	case TypeActivated:
		return &Activated{}, nil
	case TypeRetire:
		return &Retire{}, nil
	case TypeError:
		return &Error{}, nil
	case TypeDelegation:
		return &Delegation{}, nil
	case TypeKey:
		return &Key{}, nil
	case TypeReenroll:
		return &Reenroll{}, nil
	case TypeAnchors:
		return &Anchors{}, nil
	case TypeFirmware:
		return &Firmware{}, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint8(t))
}

// TypeOf returns the wire type of a message value.
func TypeOf(m Message) Type {
	switch m.(type) {
	case *Hello:
		return TypeHello
	case *Rotate:
		return TypeRotate
	case *Enroll:
		return TypeEnroll
	case *Cert:
		return TypeCert
	case *Activated:
		return TypeActivated
	case *Retire:
		return TypeRetire
	case *Error:
		return TypeError
	case *Delegation:
		return TypeDelegation
	case *Key:
		return TypeKey
	case *Reenroll:
		return TypeReenroll
	case *Anchors:
		return TypeAnchors
	case *Firmware:
		return TypeFirmware
	}
	return TypeUnknown
}

// Signed reports whether messages of type t travel inside COSE_Sign1.
// Certificate deliveries, anchor sets and firmware manifests are bare:
// each carries its own signature (the CA's, the previous anchor set's, the
// firmware key's), and a second one would only add bytes.
func Signed(t Type) bool { return t != TypeCert && t != TypeAnchors && t != TypeFirmware }

// NewID returns a fresh random message or rotation id.
func NewID() []byte {
	b := make([]byte, MessageIDSize)
	if _, err := rand.Read(b); err != nil {
		// crypto/rand does not fail on supported platforms; a broken
		// entropy source must stop the program, not yield guessable ids.
		panic(fmt.Sprintf("protocol: crypto/rand: %v", err))
	}
	return b
}

// Stamp fills the header fields a sender owns: a new message id and either
// an expiry (commands, ttl > 0) or the issued-at time (reports, ttl == 0).
// A command's expiry already bounds its life, so it carries no issued-at:
// five bytes less in every downlink. It returns m for chaining.
func Stamp[M Message](m M, now time.Time, ttl time.Duration) M {
	h := m.Hdr()
	h.ID = NewID()
	if ttl > 0 {
		h.Exp = uint64(now.Add(ttl).Unix())
	} else {
		h.IAT = uint64(now.Unix())
	}
	return m
}

// CheckTime refuses commands past their expiry and messages issued too far
// in the future.
func CheckTime(h *Header, now time.Time) error {
	n := now.Unix()
	if h.Exp != 0 && uint64(n) > h.Exp {
		return fmt.Errorf("%w: at %d, expiry %d", ErrExpired, n, h.Exp)
	}
	if h.IAT != 0 && h.IAT > uint64(now.Add(MaxClockSkew).Unix()) {
		return fmt.Errorf("%w: issued-at %d in the future", ErrExpired, h.IAT)
	}
	return nil
}
