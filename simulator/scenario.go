package simulator

import (
	"bytes"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/internal/yamlerr"
)

// Scenario is a YAML file that combines faults (and the run's size) for
// fleetsim run --scenario:
//
//	devices: 300
//	rotations: 1
//	faults:
//	  crash_fraction: 0.05
//	  offline_fraction: 0.3
//	  offline_for: 10s
//	  flap_fraction: 0.05
//	  flap_every: 2s
//	  seed: 7
//
// Fields left out keep the command line's values.
//
// A campaign block runs campaign mode (see CampaignMode), with percentages
// and rates written as on the command line:
//
//	devices: 200
//	campaign:
//	  stages: 5%,25%,100%
//	  max_failure: 2%
//	  min_reached: 5
//	  rate: 1200/min
//	  device_timeout: 5s
//	  away: 10%
//	  canary_fail: 50%
//	  rollback: true
//	  rerun: true
//	  revoke: 5
type Scenario struct {
	Devices   int    `yaml:"devices"`
	Rotations int    `yaml:"rotations"`
	Faults    Faults `yaml:"faults"`
	// Campaign, if present, replaces the command line's campaign mode.
	Campaign *CampaignMode `yaml:"campaign"`
}

// LoadScenario reads and checks a scenario file; unknown keys are errors,
// so a misspelt fault is not silently ignored.
func LoadScenario(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var sc Scenario
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, yamlerr.Clean(err))
	}
	if err := sc.Faults.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	if sc.Devices < 0 || sc.Rotations < 0 {
		return nil, fmt.Errorf("scenario %s: devices and rotations must not be negative", path)
	}
	return &sc, nil
}

// Apply puts the scenario's values into cfg.
func (sc *Scenario) Apply(cfg *Config) {
	if sc.Devices > 0 {
		cfg.Devices = sc.Devices
	}
	if sc.Rotations > 0 {
		cfg.Rotations = sc.Rotations
	}
	cfg.Faults = sc.Faults
	if sc.Campaign != nil {
		cfg.Campaign = sc.Campaign
	}
}
