package simulator

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/adminapi"
)

// CampaignMode is fleetsim's campaign mode (fleetsim run --campaign, or a
// scenario's campaign block): instead of asking for rotations itself,
// fleetsim creates identity campaigns through the admin API, as an operator
// would with fleetctl campaign create, and follows them stage by stage.
//
// A run takes up to three campaigns over the same fleet, in this order:
//
//  1. the campaign with Away devices (also the plain campaign when no
//     canary failure is asked for): it must complete, and the away
//     devices converge after they return;
//  2. with CanaryFail, the campaign whose canary cohort fails: it must
//     pause itself within its first stage; with Rollback fleetsim rolls
//     it back and checks that every device then connects with a
//     credential the broker accepts;
//  3. with Rerun, after the rollback, the same campaign again without
//     the fault: it must complete.
//
// FleetdKills (Faults) SIGKILL a spawned fleetd in the second stage of the
// last campaign meant to complete; it must resume at the same stage. With
// Revoke, fleetsim revokes that many devices at the end, so that the
// revocation latency (M5) has data. Figures M5 and M10 are read from
// fleetd's /metrics.
type CampaignMode struct {
	// Stages are cumulative fractions, ascending, the last 1 ("5%,25%,100%").
	Stages Stages `yaml:"stages"`
	// MaxFailure is the failure ratio above which a campaign pauses itself.
	MaxFailure Percent `yaml:"max_failure"`
	// MinReached devices must be reached before a stage completes.
	MinReached int `yaml:"min_reached"`
	// Rate bounds the devices a campaign starts per minute; 0: no bound.
	Rate RatePerMin `yaml:"rate"`
	// DeviceTimeout is how long a connected device may take; 0: 30 s.
	DeviceTimeout time.Duration `yaml:"device_timeout"`
	// KillDeviceTimeout is the device timeout of the campaign fleetd is
	// killed in; 0: 30 s. A rotation the kill cut short needs fleetd back,
	// the agent reconnected (its backoff) and a nudge, which a device
	// timeout short enough to fail a canary quickly does not leave.
	KillDeviceTimeout time.Duration `yaml:"kill_device_timeout"`
	// Select is the campaign's label selector; empty: every device.
	Select string `yaml:"select"`
	// Away is the fraction of the devices that are away during their
	// stage: their agents stop by the time their stage begins (one stage
	// ahead, so that none is reached before it leaves) and start again
	// when the campaign completes, or after AwayFor if set.
	Away    Percent       `yaml:"away"`
	AwayFor time.Duration `yaml:"away_for"`
	// CanaryFail is the fraction of the first stage's cohort whose agents
	// fail their rotation: they ignore every downlink, so fleetd's rotate
	// never takes effect and the rotation times out while they are
	// connected, which fleetd counts as failed.
	CanaryFail Percent `yaml:"canary_fail"`
	// Rollback rolls back the campaign that paused itself.
	Rollback bool `yaml:"rollback"`
	// Rerun runs the campaign again, without the fault, after a rollback.
	Rerun bool `yaml:"rerun"`
	// Revoke this many devices at the end of the run (M5).
	Revoke int `yaml:"revoke"`
}

// validate checks the mode and fills the defaults.
func (m *CampaignMode) validate(devices int) error {
	if len(m.Stages) == 0 {
		m.Stages = Stages{0.01, 0.1, 1}
	}
	if err := adminapi.ValidateStages(m.Stages); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	if m.DeviceTimeout == 0 {
		m.DeviceTimeout = 30 * time.Second
	}
	if m.KillDeviceTimeout == 0 {
		m.KillDeviceTimeout = 30 * time.Second
	}
	switch {
	case m.DeviceTimeout < 0 || m.KillDeviceTimeout < 0:
		return fmt.Errorf("campaign: device timeouts must not be negative")
	case m.MinReached < 0 || m.Rate < 0 || m.Revoke < 0:
		return fmt.Errorf("campaign: min reached, rate and revoke must not be negative")
	case float64(m.Away)+float64(m.CanaryFail) > 1:
		return fmt.Errorf("campaign: away and canary failure add up to more than the fleet")
	case m.Revoke > devices/2:
		return fmt.Errorf("campaign: revoke %d of %d devices: at most half", m.Revoke, devices)
	case m.Rerun && !m.Rollback:
		return fmt.Errorf("campaign: rerun follows a rollback: add rollback")
	case m.Rollback && m.CanaryFail == 0:
		return fmt.Errorf("campaign: rollback needs a canary failure to pause the campaign")
	}
	return nil
}

// request is the admin API request for one of the mode's campaigns, with
// its device timeout.
func (m *CampaignMode) request(timeout time.Duration) adminapi.CampaignRequest {
	return adminapi.CampaignRequest{Kind: adminapi.CampaignKindIdentity, Selector: m.Select, Stages: m.Stages,
		MaxFailure: float64(m.MaxFailure), MinReached: m.MinReached, Rate: int(m.Rate),
		DeviceTimeoutSeconds: timeout.Seconds()}
}

// Percent is a ratio written as a percentage ("2%"), on the command line
// and in scenario files.
type Percent float64

// String implements pflag.Value.
func (p *Percent) String() string {
	return strconv.FormatFloat(float64(*p)*100, 'f', -1, 64) + "%"
}

// Set implements pflag.Value.
func (p *Percent) Set(s string) error {
	v, err := adminapi.ParsePercent(s)
	if err != nil {
		return err
	}
	*p = Percent(v)
	return nil
}

// Type implements pflag.Value.
func (p *Percent) Type() string { return "percent" }

// UnmarshalYAML reads "2%".
func (p *Percent) UnmarshalYAML(n *yaml.Node) error { return atLine(n, p.Set(n.Value)) }

// atLine names the scenario file's line of n in err, as yaml's own errors do.
func atLine(n *yaml.Node, err error) error {
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// Stages are cumulative fractions written "1%,10%,100%".
type Stages []float64

// String implements pflag.Value.
func (s *Stages) String() string {
	var parts []string
	for _, f := range *s {
		parts = append(parts, strconv.FormatFloat(f*100, 'f', -1, 64)+"%")
	}
	return strings.Join(parts, ",")
}

// Set implements pflag.Value.
func (s *Stages) Set(v string) error {
	st, err := adminapi.ParseStages(v)
	if err != nil {
		return err
	}
	*s = st
	return nil
}

// Type implements pflag.Value.
func (s *Stages) Type() string { return "stages" }

// UnmarshalYAML reads "5%,25%,100%".
func (s *Stages) UnmarshalYAML(n *yaml.Node) error { return atLine(n, s.Set(n.Value)) }

// RatePerMin is devices per minute, written "1000/min", "20/s" or "60/h"
// in scenario files.
type RatePerMin int

// UnmarshalYAML reads "1000/min".
func (r *RatePerMin) UnmarshalYAML(n *yaml.Node) error {
	v, err := adminapi.ParseRate(n.Value)
	if err != nil {
		return atLine(n, err)
	}
	*r = RatePerMin(v)
	return nil
}

// RatePerMinute turns fleetsim's --rate (devices a second) into a
// campaign's rate (devices a minute), rounding up so that a small rate is
// not zero (no bound).
func RatePerMinute(r float64) RatePerMin {
	if r <= 0 {
		return 0
	}
	return RatePerMin(math.Ceil(r * 60))
}
