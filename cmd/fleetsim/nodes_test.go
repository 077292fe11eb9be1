package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/simulator"
)

// fleetsim over two fleetd nodes on one PostgreSQL, node 1 SIGKILLed when
// 40% of the rotations are done: every rotation completes anyway, the
// devices node 1 held reconnect to node 2 (the failover gap is measured),
// requests fail over to node 2's admin API, and the report counts the
// PostgreSQL statements per rotation from the nodes' /metrics.
func TestNodesWithKill(t *testing.T) {
	const devices = 20
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	dsn, err := pg.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "fleetd")
	if out, err := exec.Command("go", "build", "-o", bin, "../fleetd").CombinedOutput(); err != nil {
		t.Fatalf("go build fleetd: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "report.json")
	cmd := root()
	var stdout bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stdout)
	cmd.SetArgs([]string{"run", "--fleetd-bin", bin, "--nodes", "2", "--store", dsn, "--devices", "20",
		"--kill-node", "1", "--kill-at", "40%", "--baseline", "0", "--progress=false", "--report", "table",
		"--dir", t.TempDir(), "--json-out", out})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("fleetsim: %v\n%s", err, stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep simulator.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.RotationsCompleted != devices || rep.RotationsFailed != 0 {
		t.Fatalf("rotations: %d completed, %d failed (%v); want %d, 0", rep.RotationsCompleted, rep.RotationsFailed, rep.FailuresByReason, devices)
	}
	n := rep.Nodes
	if n == nil || len(n.Nodes) != 2 {
		t.Fatalf("nodes report: %+v, want two nodes", n)
	}
	n1, n2 := n.Nodes[0], n.Nodes[1]
	if n1.SessionsStart+n2.SessionsStart != devices || n1.SessionsStart == 0 {
		t.Errorf("sessions at start: node 1 %d, node 2 %d; want %d in all, some on node 1", n1.SessionsStart, n2.SessionsStart, devices)
	}
	if !n1.Killed || n.KilledNode != 1 || n.KilledAtDone < devices*4/10 || n1.SessionsEnd != -1 || n2.SessionsEnd != devices {
		t.Errorf("kill: %+v; want node 1 killed at 40%% or later and every device on node 2 at the end", n)
	}
	// Devices move between nodes as they rotate (a new credential, a new
	// connection), so node 1 held some number of them at its kill: each
	// of those reconnected to node 2.
	if n1.SessionsAtKill == 0 || n.FailoverDevices == 0 || n.NotFailedOver != 0 || n.FailoverGapMaxMs <= 0 {
		t.Errorf("failover: node 1 held %d sessions at its kill; %d devices reconnected (%d not), gap max %.0f ms; want some, all, a positive gap",
			n1.SessionsAtKill, n.FailoverDevices, n.NotFailedOver, n.FailoverGapMaxMs)
	}
	// Requests (issue, activate) and the rotations' reads: a few tens of
	// statements per rotation, never none.
	if n.StatementsPerRotation < 10 || n.StatementsPerRotation > 200 {
		t.Errorf("statements per rotation %.1f, want between 10 and 200", n.StatementsPerRotation)
	}
	if n2.CPUS <= 0 {
		t.Errorf("node 2 CPU %.2f s, want some", n2.CPUS)
	}
	t.Logf("failover gap p50 %.0f ms, max %.0f ms over %d devices; %.1f statements per rotation",
		n.FailoverGapP50Ms, n.FailoverGapMaxMs, n.FailoverDevices, n.StatementsPerRotation)
}
