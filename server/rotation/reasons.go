package rotation

import (
	"errors"
	"fmt"

	"github.com/keyfleet/keyfleet/protocol"
)

// Reason is why an uplink was refused. Its string is the one word used
// for it everywhere: the "reason" of the log line, the counter's name in
// Stats().Rejected (and fleetctl status), and the detail of the error
// answer the device gets. Reasons lists them all with their wire codes.
type Reason string

// Rejection reasons. See Reasons for what each means and its wire code.
const (
	ReasonBadTopic          Reason = "bad-topic"
	ReasonTooLarge          Reason = "too-large"
	ReasonMalformed         Reason = "malformed"
	ReasonUnsigned          Reason = "unsigned"
	ReasonUnexpectedType    Reason = "unexpected-type"
	ReasonUnknownSlot       Reason = "unknown-slot"
	ReasonBadSignature      Reason = "bad-signature"
	ReasonUnknownKey        Reason = "unknown-key"
	ReasonKeyNotAccepted    Reason = "key-not-accepted"
	ReasonReplay            Reason = "replay"
	ReasonReenrollTooSoon   Reason = "reenroll-too-soon"
	ReasonExpired           Reason = "expired"
	ReasonStale             Reason = "stale"
	ReasonUnknownVersion    Reason = "unknown-version"
	ReasonNotPending        Reason = "not-pending"
	ReasonAlreadyIssued     Reason = "already-issued"
	ReasonBadCSR            Reason = "bad-csr"
	ReasonCSRIdentity       Reason = "csr-identity"
	ReasonKeyReuse          Reason = "key-reuse"
	ReasonRevoked           Reason = "revoked"
	ReasonNoRotation        Reason = "no-rotation"
	ReasonUnknownDevice     Reason = "unknown-device"
	ReasonNoBirthCredential Reason = "no-birth-credential"
	ReasonNotCurrentKey     Reason = "not-current-key"
	ReasonQueueFull         Reason = "queue-full"
	ReasonInternal          Reason = "internal"
)

// ReasonInfo is one row of Reasons.
type ReasonInfo struct {
	Reason Reason
	// Code is the error code of the answer on the wire.
	Code protocol.ErrorCode
	// Answered says whether the device gets an error message for it: every
	// refusal of an uplink whose topic names a device does (at most one
	// answer per device and reason per AnswerInterval), except a message
	// that names no device, one dropped before it was read, and fleetd's
	// own failures.
	Answered bool
	// Meaning is what happened, for operators and device vendors.
	Meaning string
}

// Reasons is the one table of rejection reasons: each reason's wire error
// code and whether the device is answered. docs/protocol.md shows the same
// table; a test checks that every reason has a code and its own word.
var Reasons = []ReasonInfo{
	{ReasonBadTopic, protocol.CodeMalformed, false, "the topic is not a device's up or re-enrolment topic"},
	{ReasonTooLarge, protocol.CodeMalformed, true, "the message is larger than protocol.MaxPacketSize"},
	{ReasonMalformed, protocol.CodeMalformed, true, "the message does not decode (COSE, CBOR or a field)"},
	{ReasonUnsigned, protocol.CodeMalformed, true, "an uplink that is not COSE_Sign1"},
	{ReasonUnexpectedType, protocol.CodeMalformed, true, "a message type a device does not send on that topic"},
	{ReasonUnknownSlot, protocol.CodeMalformed, true, "a slot that does not rotate by CSR"},
	{ReasonBadSignature, protocol.CodeBadSignature, true, "the signature does not verify"},
	{ReasonUnknownKey, protocol.CodeBadSignature, true, "signed by a key the device never had certified"},
	{ReasonKeyNotAccepted, protocol.CodeBadSignature, true, "signed by a version no longer accepted (retired, revoked, expired beyond the window)"},
	{ReasonNotCurrentKey, protocol.CodeNotCurrentKey, true, "an enroll signed by a version that is not the active one"},
	{ReasonReplay, protocol.CodeReplay, true, "a message id seen before"},
	{ReasonReenrollTooSoon, protocol.CodeReplay, true, "a re-enrolment with a new key while the previous one is unused"},
	{ReasonExpired, protocol.CodeExpired, true, "past its expiry, or issued in the future"},
	{ReasonStale, protocol.CodeExpired, true, "issued longer ago than the command lifetime"},
	{ReasonUnknownVersion, protocol.CodeUnknownVersion, true, "an activation of a version that is not issued to that key"},
	{ReasonNotPending, protocol.CodeUnknownVersion, true, "an enroll for a version that is no longer pending"},
	{ReasonAlreadyIssued, protocol.CodeUnknownVersion, true, "an enroll with another key for a version already issued"},
	{ReasonBadCSR, protocol.CodeBadCSR, true, "the CSR does not parse or breaks the CSR policy"},
	{ReasonCSRIdentity, protocol.CodeBadCSR, true, "the CSR names another identity"},
	{ReasonKeyReuse, protocol.CodeBadCSR, true, "the CSR's key is an earlier version's or the birth key"},
	{ReasonRevoked, protocol.CodeRevoked, true, "the device is revoked"},
	{ReasonNoRotation, protocol.CodeNoRotation, true, "an enroll for a rotation that was never requested"},
	{ReasonUnknownDevice, protocol.CodeUnknownDevice, true, "no device of that id is registered"},
	{ReasonNoBirthCredential, protocol.CodeUnknownDevice, true, "a re-enrolment from a device with no birth credential on record"},
	{ReasonQueueFull, protocol.CodeInternal, false, "dropped unread: the device's worker queue was full"},
	{ReasonInternal, protocol.CodeInternal, false, "fleetd failed (store, HSM); the device retries"},
}

// Info returns reason's row of Reasons; an unknown reason is reported as
// internal.
func (r Reason) Info() ReasonInfo {
	for _, ri := range Reasons {
		if ri.Reason == r {
			return ri
		}
	}
	return ReasonInfo{Reason: r, Code: protocol.CodeInternal}
}

// Rejection is an uplink refused for a reason that is counted.
type Rejection struct {
	Reason Reason
	Err    error
}

func (r *Rejection) Error() string { return "rotation: " + string(r.Reason) + ": " + r.Err.Error() }
func (r *Rejection) Unwrap() error { return r.Err }

func reject(reason Reason, format string, args ...any) error {
	return &Rejection{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of a rejection, or "" for any other error.
func ReasonOf(err error) Reason {
	var r *Rejection
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

// protocolReason maps a protocol error to its rejection reason.
func protocolReason(err error) Reason {
	switch {
	case errors.Is(err, protocol.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, protocol.ErrBadSignature):
		return ReasonBadSignature
	case errors.Is(err, protocol.ErrUnsigned):
		return ReasonUnsigned
	case errors.Is(err, protocol.ErrExpired):
		return ReasonExpired
	case errors.Is(err, protocol.ErrBadDeviceID):
		return ReasonBadTopic
	}
	return ReasonMalformed
}
