package firmware

import "errors"

// Manifest errors, returned by Verify (and by Install, which calls it). The
// agent reports a refused manifest by these, so each names one reason; wrap
// them with context, never replace them.
var (
	// ErrTooLarge: the signed manifest exceeds MaxManifestSize.
	ErrTooLarge = errors.New("firmware: manifest exceeds size limit")
	// ErrMalformed: the bytes are not a well-formed signed manifest (not a
	// tagged COSE_Sign1, bad or non-canonical CBOR, unknown or duplicate
	// fields, missing or out-of-range fields, unsupported format).
	ErrMalformed = errors.New("firmware: malformed manifest")
	// ErrUntrustedKey: the manifest names (by kid) a key other than the
	// trusted firmware-signing key. A manifest signed by a rotated-out
	// firmware key ends here, before any signature arithmetic.
	ErrUntrustedKey = errors.New("firmware: manifest not signed by the trusted key")
	// ErrBadSignature: the manifest names the trusted key but its signature
	// does not verify, or it uses an algorithm other than ES256.
	ErrBadSignature = errors.New("firmware: bad manifest signature")
)

// Image errors, returned by Manifest.CheckImage, by Install, and as the
// Reason of a rolled-back boot when the image on disk went bad.
var (
	// ErrSize: the image length differs from the manifest's Size.
	ErrSize = errors.New("firmware: image size does not match the manifest")
	// ErrDigest: the image's SHA-256 differs from the manifest's Digest.
	ErrDigest = errors.New("firmware: image digest does not match the manifest")
)

// Install and boot errors.
var (
	// ErrWrongClass: the manifest (or a slot directory) is for another
	// vendor or device class than this device's Identity.
	ErrWrongClass = errors.New("firmware: manifest is for another vendor or device class")
	// ErrDowngrade: the manifest's version is not newer than the running
	// firmware. This also refuses the replay of an old, validly signed
	// manifest, and the re-install of the running version.
	ErrDowngrade = errors.New("firmware: manifest version not newer than the running firmware")
	// ErrFailedVersion: this version already failed a trial boot on this
	// device; the server has to publish a newer version to try again.
	ErrFailedVersion = errors.New("firmware: version failed a trial boot before")
	// ErrBootCheck: the caller's boot check refused the trial image. The
	// check's own error is wrapped too.
	ErrBootCheck = errors.New("firmware: boot check failed")
	// ErrBootInterrupted: a trial boot started (its attempt was counted) but
	// never confirmed, because the process crashed or lost power, or the
	// check panicked. Like a bootloader's boot counter, this rolls back.
	ErrBootInterrupted = errors.New("firmware: trial boot interrupted")
	// ErrState: the slot state file is unreadable or inconsistent. Atomic
	// writes rule out torn files, so this means corruption or tampering.
	ErrState = errors.New("firmware: invalid slot state")
)

// IsRejection reports whether err refuses a manifest or an image (as
// opposed to an I/O failure or a misuse of the API), so the agent can tell
// the server "this update is bad" rather than "try again later".
func IsRejection(err error) bool {
	for _, e := range []error{ErrTooLarge, ErrMalformed, ErrUntrustedKey, ErrBadSignature,
		ErrSize, ErrDigest, ErrWrongClass, ErrDowngrade, ErrFailedVersion} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
