package adminapi

// ErrorBody is the body of every non-2xx answer.
type ErrorBody struct {
	// Error is the message, for people.
	Error string `json:"error"`
	// Code is one of the Code constants, for programs: it stays the same
	// when the message is reworded. Empty from a fleetd that predates it.
	Code string `json:"code,omitempty"`
}

// Error codes, each with the HTTP status it comes with.
const (
	// CodeInvalid (400): the request is malformed or names something
	// impossible (a bad CSR, an unknown anchor key, an old firmware version).
	CodeInvalid = "invalid"
	// CodeUnauthenticated (401): no verified client certificate.
	CodeUnauthenticated = "unauthenticated"
	// CodeForbidden (403): the certificate is not an operator's.
	CodeForbidden = "forbidden"
	// CodeNotFound (404): no such device, or no such data-key version.
	CodeNotFound = "not-found"
	// CodeExists (409): a device with that id exists.
	CodeExists = "exists"
	// CodeRevoked (409): the device is revoked; nothing more happens to it.
	CodeRevoked = "revoked"
	// CodeAlreadyRevoked (409): a revocation of a device revoked before.
	CodeAlreadyRevoked = "already-revoked"
	// CodeInternal (500): fleetd failed; its log says why.
	CodeInternal = "internal"
)
