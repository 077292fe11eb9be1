package simulator

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

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
