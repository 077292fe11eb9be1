package policy

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want func(Policy) bool
		err  error
	}{
		{"empty takes defaults", "", func(p Policy) bool { return p == Default() }, nil},
		{"days", "grace: 30d\nrenew_after_expiry: 400d\n", func(p Policy) bool {
			return p.Grace.D() == 30*Day && p.RenewAfterExpiry.D() == 400*Day && p.CertValidity == Default().CertValidity
		}, nil},
		{"go duration", "cert_validity: 720h\n", func(p Policy) bool { return p.CertValidity.D() == 720*time.Hour }, nil},
		{"unknown key", "grase: 30d\n", nil, ErrInvalid},
		{"bad duration", "grace: soon\n", nil, ErrInvalid},
		{"renew_before out of range", "renew_before: 1.5\n", nil, ErrInvalid},
		{"validity too short", "cert_validity: 1m\n", nil, ErrInvalid},
		{"negative grace", "grace: -1h\n", nil, ErrInvalid},
		{"negative days", "grace: -3d\n", nil, ErrInvalid},
		{"days beyond a Duration", "grace: 9999999999d\n", nil, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.in))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse: got err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !tt.want(p) {
				t.Errorf("Parse(%q) = %+v", tt.in, p)
			}
		})
	}
}

func TestNeedsRenewal(t *testing.T) {
	p := Default() // one third
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(90 * Day)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"fresh", nb.Add(Day), false},
		{"half way", nb.Add(45 * Day), false},
		{"before the window and its largest jitter", na.Add(-30*Day - 90*Day/20 - time.Hour), false},
		{"inside the last third", na.Add(-29 * Day), true},
		{"expired", na.Add(time.Hour), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, why := p.NeedsRenewal("dev-1", nb, na, tt.now); got != tt.want {
				t.Errorf("NeedsRenewal at %v = %v (%s), want %v", tt.now, got, why, tt.want)
			}
		})
	}
}

func TestIdentityAccess(t *testing.T) {
	p := Default()
	p.RenewAfterExpiry = Duration(100 * Day)
	na := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		now  time.Time
		want Access
	}{
		{na.Add(-time.Second), AccessFull},
		{na, AccessRenew},
		{na.Add(99 * Day), AccessRenew},
		{na.Add(100 * Day), AccessExpired},
	}
	for _, tt := range tests {
		if got := p.IdentityAccess(na, tt.now); got != tt.want {
			t.Errorf("IdentityAccess at %v = %v, want %v", tt.now, got, tt.want)
		}
	}
	p.RenewAfterExpiry = 0 // what WithDefaults would refill; here: disabled
	if got := p.IdentityAccess(na, na.Add(time.Second)); got != AccessExpired {
		t.Errorf("with no window: got %v, want %v", got, AccessExpired)
	}
}

// TestRenewalJitter: a fleet enrolled on one day must not renew in one
// minute: the per-device jitter spreads the start of the window over up to
// a twentieth of the lifetime.
func TestRenewalJitter(t *testing.T) {
	p := Default()
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(90 * Day)
	first := func(dev string) time.Time {
		// The hour at which NeedsRenewal first says yes.
		for at := na.Add(-40 * Day); at.Before(na); at = at.Add(time.Hour) {
			if due, _ := p.NeedsRenewal(dev, nb, na, at); due {
				return at
			}
		}
		return na
	}
	lo, hi := na, nb
	for i := 0; i < 200; i++ {
		f := first(fmt.Sprintf("dev-%d", i))
		if f.Before(lo) {
			lo = f
		}
		if f.After(hi) {
			hi = f
		}
	}
	if spread := hi.Sub(lo); spread < 3*Day || spread > 90*Day/20+time.Hour {
		t.Errorf("renewal starts spread over %v, want most of %v", spread, 90*Day/20)
	}
}

// An error names the file and line once, then the field, and the YAML
// decoder not at all, so fleetd prints "fleetd: fleet.yaml:1: grace: ..."
// with no stutter.
func TestParseErrorMessages(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"grace: soon\n", `policy:1: grace: duration "soon": want a duration like 90s, 12h or 7d`},
		{"grase: 30d\n", "policy:1: grase: unknown field (known: cert_validity, renew_before, grace, renew_after_expiry, " +
			"data_keys_decrypt, data_key_destroy_after, max_key_age, schedule, jitter, campaign, rules)"},
		{"grace: [1\n", "policy:1: did not find expected ',' or ']'"},
		{"renew_before: 2\n", `policy:1: renew_before: "2" must be a number strictly between 0 and 1`},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("Parse(%q): got %v, want %q", tc.in, err, tc.want)
		}
	}
}
