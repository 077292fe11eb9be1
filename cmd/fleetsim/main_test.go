package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// Bad flags are refused at once, before any fleetd or device starts: a
// typo must not cost a whole run.
func TestFlagsCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"run", "--report", "yaml", "--dir", dir}, `--report "yaml": want json or table`},
		{[]string{"year", "--report", "yaml", "--dir", dir}, `--report "yaml": want json or table`},
		{[]string{"run", "--devices", "0", "--dir", dir}, "--devices must be positive"},
		{[]string{"run", "--crash", "2", "--dir", dir}, "crash_fraction 2 is not between 0 and 1"},
		{[]string{"run", "--offline-for", "soon"}, `duration "soon"`},
		{[]string{"run", "--kill-fleetd", "1", "--dir", dir}, "needs --fleetd-bin"},
		{[]string{"run", "--log-file", dir + "/l", "--log-level", "loud"}, `log level "loud"`},
		{[]string{"run", "--campaign", "--stages", "5%,50%", "--dir", dir}, "the last must be 100%"},
		{[]string{"run", "--campaign", "--away", "10", "--dir", dir}, `"10": want a percentage like 2%`},
		{[]string{"run", "--campaign", "--rerun", "--dir", dir}, "rerun follows a rollback"},
		{[]string{"run", "--campaign", "--rollback", "--dir", dir}, "rollback needs a canary failure"},
		{[]string{"run", "--campaign", "--canary-fail", "50%", "--kill-fleetd", "1", "--fleetd-bin", "x", "--dir", dir},
			"--kill-fleetd needs a campaign that completes"},
		{[]string{"run", "--nodes", "2", "--store", "postgres://x/y", "--dir", dir}, "--nodes spawns fleetd nodes and needs --fleetd-bin"},
		{[]string{"run", "--nodes", "2", "--fleetd-bin", "x", "--dir", dir}, "--nodes needs --store postgres://"},
		{[]string{"run", "--nodes", "2", "--fleetd-bin", "x", "--store", "postgres://x/y", "--kill-node", "3", "--dir", dir}, "--kill-node 3: want a node between 1 and --nodes (2)"},
		{[]string{"run", "--nodes", "2", "--fleetd-bin", "x", "--store", "postgres://x/y", "--kill-node", "1", "--dir", dir}, "--kill-at must be between"},
		{[]string{"run", "--server", "127.0.0.1:1,127.0.0.1:2", "--server-ops", "127.0.0.1:3", "--dir", dir}, "--server-ops names 1 listeners for 2 --server addresses"},
		{[]string{"rn"}, `unknown command "rn" for "fleetsim"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := root()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(tc.args)
			start := time.Now()
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("refused after %v: the run started first", took)
			}
		})
	}
}

func TestDurationFlagsTakeDays(t *testing.T) {
	cmd := root()
	run, _, err := cmd.Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := run.ParseFlags([]string{"--soak", "1d", "--offline-for", "1d2h"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"soak": "1d", "offline-for": "26h0m0s"} {
		if got := run.Flags().Lookup(name).Value.String(); got != want {
			t.Errorf("--%s: got %s, want %s", name, got, want)
		}
	}
}
