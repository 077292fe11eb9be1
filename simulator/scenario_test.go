package simulator

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// A campaign block reads percentages and rates as the command line does.
func TestLoadScenarioCampaign(t *testing.T) {
	path := filepath.Join(t.TempDir(), "campaign.yaml")
	yaml := "devices: 200\ncampaign:\n  stages: 5%,25%,100%\n  max_failure: 2%\n  min_reached: 5\n  rate: 20/s\n" +
		"  device_timeout: 3s\n  away: 10%\n  canary_fail: 50%\n  rollback: true\n  rerun: true\n  revoke: 5\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := LoadScenario(path)
	if err != nil {
		t.Fatal(err)
	}
	want := CampaignMode{Stages: Stages{0.05, 0.25, 1}, MaxFailure: 0.02, MinReached: 5, Rate: 1200, DeviceTimeout: 3 * time.Second,
		Away: 0.1, CanaryFail: 0.5, Rollback: true, Rerun: true, Revoke: 5}
	if sc.Campaign == nil || !reflect.DeepEqual(*sc.Campaign, want) {
		t.Fatalf("got %+v, want %+v", sc.Campaign, want)
	}
	var cfg Config
	sc.Apply(&cfg)
	if cfg.Devices != 200 || cfg.Campaign != sc.Campaign {
		t.Errorf("applied: %d devices, campaign %p; want 200, %p", cfg.Devices, cfg.Campaign, sc.Campaign)
	}
}

func TestLoadScenario(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		wantErr    string // the whole message after the path
	}{
		{"valid", "devices: 300\nfaults:\n  offline_fraction: 0.3\n  offline_for: 10s\n", ""},
		{"unknown key", "devices: 3\nfaults:\n  crash: 0.1\n", "line 3: field crash not found in type simulator.Faults"},
		{"bad duration", "faults:\n  offline_for: soon\n", "line 2: cannot unmarshal !!str `soon` into time.Duration"},
		{"fraction out of range", "faults:\n  crash_fraction: 3\n", "faults: crash_fraction 3 is not between 0 and 1"},
		{"negative devices", "devices: -1\n", "devices and rotations must not be negative"},
		{"bad campaign stages", "campaign:\n  stages: 5%,50%\n", "line 2: stages [0.05 0.5]: the last must be 100%"},
		{"bad campaign percent", "campaign:\n  away: 10\n", `line 2: "10": want a percentage like 2%`},
		{"bad campaign rate", "campaign:\n  rate: fast\n", `line 2: rate "fast": want N/min, N/s or N/h with N > 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			sc, err := LoadScenario(path)
			if tc.wantErr == "" {
				if err != nil || sc.Devices != 300 || sc.Faults.OfflineFor != 10*time.Second {
					t.Fatalf("got %+v, %v", sc, err)
				}
				return
			}
			if want := "scenario " + path + ": " + tc.wantErr; err == nil || err.Error() != want {
				t.Errorf("got %v, want %q", err, want)
			}
		})
	}
}
