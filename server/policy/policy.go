// Package policy holds the operator's rules for key lifetimes and the
// windows that keep offline devices from being bricked, and the pure
// decisions made from them.
//
// # Basics
//
// A Policy is loaded from a YAML file that lives in the operator's own
// repository (fleetd --policy), validated once, and handed to the rotation
// engine and the broker. Every decision (does this certificate need renewal,
// may this expired certificate still renew, how must this connection be
// treated) is a pure function of the policy, the certificate dates and the
// time, so it can be table-tested and explained in a log line.
//
// # Caveats
//
// The windows are only as good as the clocks: fleetd's clock decides. A
// device whose clock is far off still connects (the CA backdates its
// certificates and the server checks dates), but its own view of expiry
// may differ from the server's.
package policy

import (
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/internal/durationflag"
)

// Policy is the operator's rule set. Zero fields take the defaults of
// Default (so a window cannot be set to exactly zero: use a short one);
// durations in YAML are Go durations ("720h") or days ("400d").
type Policy struct {
	// CertValidity is the lifetime of device identity certificates.
	CertValidity Duration `yaml:"cert_validity" json:"cert_validity"`
	// RenewBefore is the share of a certificate's lifetime, counted back
	// from its expiry, within which the server rotates a connecting device
	// on its own (certmagic's and step's one third).
	RenewBefore float64 `yaml:"renew_before" json:"renew_before"`
	// Grace is how long a superseded identity stays accepted after the
	// device activated its successor.
	Grace Duration `yaml:"grace" json:"grace"`
	// RenewAfterExpiry is how long after its certificate expired a device
	// may still connect with it, reach only its rotation topics and renew
	// with its old key. Past the window the device re-enrols with its
	// birth credential. Zero takes the default.
	RenewAfterExpiry Duration `yaml:"renew_after_expiry" json:"renew_after_expiry"`
	// DataKeysDecrypt is how many data-key versions older than the primary
	// stay enabled for decryption; older ones are retired (devices delete
	// them, the escrow keeps them until DataKeyDestroyAfter).
	DataKeysDecrypt int `yaml:"data_keys_decrypt" json:"data_keys_decrypt"`
	// DataKeyDestroyAfter is how long a retired data key stays in escrow
	// before it is destroyed for good.
	DataKeyDestroyAfter Duration `yaml:"data_key_destroy_after" json:"data_key_destroy_after"`
}

// Default is the policy fleetd runs with when it is given none: long
// windows, because the devices this is for sleep for months.
func Default() Policy {
	return Policy{
		CertValidity:        Duration(90 * Day),
		RenewBefore:         1.0 / 3,
		Grace:               Duration(7 * Day),
		RenewAfterExpiry:    Duration(365 * Day),
		DataKeysDecrypt:     2,
		DataKeyDestroyAfter: Duration(365 * Day),
	}
}

// Day is 24 hours; policies speak in days.
const Day = durationflag.Day

// Errors of policy files.
var (
	// ErrInvalid: a policy breaks a rule; the message says which.
	ErrInvalid = errors.New("policy: invalid")
)

// Load reads and validates a YAML policy file and returns its defaults;
// missing fields take Default's. LoadFile keeps the rules too.
func Load(path string) (Policy, error) {
	f, err := LoadFile(path)
	if err != nil {
		return Policy{}, err
	}
	return f.Defaults, nil
}

// Parse reads a YAML policy (ParseFile) and returns its defaults; unknown
// keys are refused, so a typo does not silently leave a default in force.
func Parse(b []byte) (Policy, error) {
	f, err := ParseFile("", b)
	if err != nil {
		return Policy{}, err
	}
	return f.Defaults, nil
}

// WithDefaults fills zero fields from Default.
func (p Policy) WithDefaults() Policy {
	d := Default()
	if p.CertValidity == 0 {
		p.CertValidity = d.CertValidity
	}
	if p.RenewBefore == 0 {
		p.RenewBefore = d.RenewBefore
	}
	if p.Grace == 0 {
		p.Grace = d.Grace
	}
	if p.RenewAfterExpiry == 0 {
		p.RenewAfterExpiry = d.RenewAfterExpiry
	}
	if p.DataKeysDecrypt == 0 {
		p.DataKeysDecrypt = d.DataKeysDecrypt
	}
	if p.DataKeyDestroyAfter == 0 {
		p.DataKeyDestroyAfter = d.DataKeyDestroyAfter
	}
	return p
}

// Validate checks the rules between fields.
func (p Policy) Validate() error {
	switch {
	case p.CertValidity.D() < time.Hour:
		return fmt.Errorf("%w: cert_validity %v is under an hour", ErrInvalid, p.CertValidity.D())
	case p.RenewBefore <= 0 || p.RenewBefore >= 1:
		return fmt.Errorf("%w: renew_before %v must lie strictly between 0 and 1", ErrInvalid, p.RenewBefore)
	case p.Grace.D() < 0 || p.RenewAfterExpiry.D() < 0 || p.DataKeyDestroyAfter.D() < 0:
		return fmt.Errorf("%w: negative window", ErrInvalid)
	case p.DataKeysDecrypt < 0 || p.DataKeysDecrypt > 16:
		return fmt.Errorf("%w: data_keys_decrypt %d outside 0-16", ErrInvalid, p.DataKeysDecrypt)
	}
	return nil
}

// NeedsRenewal reports whether a certificate valid from notBefore to
// notAfter should be replaced at now: inside the last RenewBefore share of
// its life, minus a per-device jitter of up to a twentieth of the lifetime
// (smallstep's renewer) so that a fleet enrolled on one day does not rotate
// in one minute. The reason says why, for the log.
func (p Policy) NeedsRenewal(device string, notBefore, notAfter, now time.Time) (bool, string) {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return true, "certificate has no lifetime"
	}
	if !now.Before(notAfter) {
		return true, "certificate expired"
	}
	window := time.Duration(float64(life) * p.RenewBefore)
	h := fnv.New32a()
	h.Write([]byte(device))
	jitter := time.Duration(float64(life/20) * float64(h.Sum32()) / (1 << 32))
	if now.After(notAfter.Add(-window - jitter)) {
		return true, fmt.Sprintf("in the last %.0f%% of its lifetime", p.RenewBefore*100)
	}
	return false, ""
}

// Access is how the broker treats a connection.
type Access uint8

// Access levels. The zero value refuses.
const (
	AccessNone    Access = 0
	AccessFull    Access = 1 // a valid identity: its own topics and the broadcasts
	AccessRenew   Access = 2 // an expired identity within RenewAfterExpiry: its own up and down only
	AccessEnroll  Access = 3 // a birth credential: its re-enrolment topics only
	AccessExpired Access = 4 // refused: expired past every window (for the reason only)
)

func (a Access) String() string {
	switch a {
	case AccessFull:
		return "full"
	case AccessRenew:
		return "renew-only"
	case AccessEnroll:
		return "enroll-only"
	case AccessExpired:
		return "expired"
	}
	return "none"
}

// IdentityAccess decides what an identity certificate that expires at
// notAfter may do at now.
func (p Policy) IdentityAccess(notAfter, now time.Time) Access {
	switch {
	case now.Before(notAfter):
		return AccessFull
	case now.Before(notAfter.Add(p.RenewAfterExpiry.D())):
		return AccessRenew
	}
	return AccessExpired
}

// Duration is a time.Duration that YAML and JSON read as "720h" or "30d".
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML accepts what durationflag.Parse accepts: Go durations and
// days ("30d", "1d12h"), as fleetd's duration flags do.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := durationflag.Parse(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as Go does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ParseDuration reads a duration as a policy file does (durationflag.Parse);
// its errors wrap ErrInvalid.
func ParseDuration(s string) (time.Duration, error) {
	v, err := durationflag.Parse(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return v, nil
}
