package adminapi

// RotationRef names one requested rotation: the device and the identity
// version RotateResponse gave it.
type RotationRef struct {
	Device  string `json:"device"`
	Version uint32 `json:"version"`
}

// ProgressRequest asks how far requested rotations have come (`POST
// /v1/rotations/progress`); `fleetctl rotate --wait` polls it. At most
// MaxProgress rotations per request.
type ProgressRequest struct {
	Rotations []RotationRef `json:"rotations"`
}

// MaxProgress bounds a ProgressRequest.
const MaxProgress = 1000

// RotationProgress is where one rotation stands.
type RotationProgress struct {
	Device  string `json:"device"`
	Version uint32 `json:"version"`
	// State is the version's life-cycle state: pending, issued, active,
	// superseded, retired, failed, cancelled, revoked; "revoked" too when
	// the device is.
	State string `json:"state,omitempty"`
	// Connected says whether the device has a session at the broker now;
	// null when fleetd cannot tell (an external broker).
	Connected *bool  `json:"connected"`
	Error     string `json:"error,omitempty"`
}

// ProgressResponse answers a ProgressRequest, in request order.
type ProgressResponse struct {
	Rotations []RotationProgress `json:"rotations"`
}
