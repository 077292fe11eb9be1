package simulator

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
)

// buildFleetd builds fleetd into a temporary directory: campaign mode
// SIGKILLs it, so it runs as a process of its own.
func buildFleetd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "../cmd/fleetd").CombinedOutput()
	if err != nil {
		t.Fatalf("go build fleetd: %v\n%s", err, out)
	}
	return filepath.Join(dir, "fleetd")
}

// The campaign acceptance test, on one fleet of 200 real agents and a
// real fleetd (its own process, SoftHSM2, embedded broker, bbolt):
//
//   - a campaign over stages 5%/25%/100% with 10% of the devices away
//     during their stage completes, reports them away, and they converge
//     after they return;
//   - a campaign whose canary cohort is made to fail pauses itself within
//     its first stage; the rollback leaves every device on a credential
//     the broker accepts (each agent reconnects and says hello); all of it
//     is in the audit chain, which verifies;
//   - the campaign run again is SIGKILLed after its first stage, while
//     devices of its stage still wait for their start (paced by the rate),
//     resumes at that stage and completes, with no version issued twice;
//   - a revocation at the end: M5 and M10 are read from fleetd's /metrics.
func TestCampaignAcceptance(t *testing.T) {
	const devices = 200
	bin := buildFleetd(t)
	dir := t.TempDir()
	start := time.Now()
	rep, err := Run(context.Background(), Config{Devices: devices, Dir: dir, FleetdBin: bin,
		Faults: Faults{FleetdKills: 1},
		Campaign: &CampaignMode{Stages: Stages{0.05, 0.25, 1}, MaxFailure: 0.02, MinReached: 1, Rate: 1200,
			DeviceTimeout: 3 * time.Second, KillDeviceTimeout: 30 * time.Second, Away: 0.1, CanaryFail: 0.5,
			Rollback: true, Rerun: true, Revoke: 5}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("campaign acceptance run: %v", time.Since(start).Round(time.Second))
	cr := rep.Campaign
	if len(cr.Problems) != 0 {
		t.Errorf("problems: %q", cr.Problems)
	}
	if len(cr.Runs) != 3 {
		t.Fatalf("%d campaigns, want 3: %+v", len(cr.Runs), cr.Runs)
	}

	// (a) Away devices.
	a := cr.Runs[0]
	if a.Name != PhaseCampaign || a.State != adminapi.CampaignStateCompleted || len(a.StageReports) != 3 {
		t.Fatalf("campaign with away devices: %s %s, %d stages (%s)", a.Name, a.State, len(a.StageReports), a.Reason)
	}
	away := 0
	for i, s := range a.StageReports {
		if want := []int{10, 40, 150}[i]; s.Devices != want || s.Failed != 0 || s.Away == 0 || s.Succeeded+s.Away != want {
			t.Errorf("stage %d: %+v, want %d devices, some away, the rest succeeded", i+1, s, want)
		}
		away += s.Away
	}
	if a.AwayDevices != devices/10 || away != a.AwayDevices || a.AwayConverged != a.AwayDevices || len(a.AwayNotConverged) != 0 {
		t.Errorf("away: %d planned, %d reported by the stages, %d converged, not converged %v; want %d each",
			a.AwayDevices, away, a.AwayConverged, a.AwayNotConverged, devices/10)
	}

	// (b) Canary failure, self-pause, rollback.
	b := cr.Runs[1]
	if b.Name != PhaseCanary || !b.SelfPaused || b.PausedInStage != 1 || b.State != adminapi.CampaignStatePaused {
		t.Fatalf("canary failure: %+v", b)
	}
	if s := b.StageReports[0]; b.InjectedFailures != 5 || s.Failed == 0 || s.FailureRatio <= 0.02 || len(b.StageReports) != 1 {
		t.Errorf("canary stage: %d injected, %+v", b.InjectedFailures, b.StageReports)
	}
	if !b.RolledBack || b.RollbackAccepted != devices || len(b.RollbackRefused) != 0 || b.RollbackS <= 0 {
		t.Errorf("rollback: rolled back %v, %d of %d reconnected accepted, refused %v, %.1f s",
			b.RolledBack, b.RollbackAccepted, devices, b.RollbackRefused, b.RollbackS)
	}
	for _, action := range []string{"campaign-created", "campaign-paused", "campaign-rolled-back"} {
		if b.Audit[action] != 1 {
			t.Errorf("campaign %s: %d %s audit records, want 1 (%v)", b.ID, b.Audit[action], action, b.Audit)
		}
	}
	if n := b.Audit["failed"] + b.Audit["cancelled"]; n != b.InjectedFailures {
		t.Errorf("campaign %s: %d rotations failed or cancelled in the audit, want %d (%v)", b.ID, n, b.InjectedFailures, b.Audit)
	}

	// (c) SIGKILL mid-campaign.
	c := cr.Runs[2]
	if c.Name != PhaseRerun || c.State != adminapi.CampaignStateCompleted || len(c.FailedDevices) != 0 {
		t.Fatalf("rerun: %s %s (%s), failed %v", c.Name, c.State, c.Reason, c.FailedDevices)
	}
	if len(c.FleetdKills) != 1 || c.FleetdKills[0].StageAtKill < 2 || c.FleetdKills[0].StageAfter != c.FleetdKills[0].StageAtKill ||
		c.FleetdKills[0].StateAfter != adminapi.CampaignStateRunning {
		t.Errorf("kills: %+v, want one in stage 2 or 3, resumed running in the same stage", c.FleetdKills)
	}
	if !cr.AuditVerified || len(cr.VersionsIssuedTwice) != 0 {
		t.Errorf("audit verified %v, versions issued twice %v", cr.AuditVerified, cr.VersionsIssuedTwice)
	}
	if cr.Revoked != 5 || cr.M5Revocations != 5 || cr.M5RevocationP99S <= 0 {
		t.Errorf("M5: %d revoked, %d revocations, p99 %v s", cr.Revoked, cr.M5Revocations, cr.M5RevocationP99S)
	}
	if cr.M10Recoveries == 0 || cr.M10RecoveryP99S <= 0 {
		t.Errorf("M10: %d recoveries, p99 %v s; the canary's failed devices recover in the rerun", cr.M10Recoveries, cr.M10RecoveryP99S)
	}

	// The report against fleetd's own store, read after it stopped.
	st, err := store.OpenBolt(datadir.Paths{Dir: filepath.Join(dir, "fleetd")}.Store(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.VerifyAudit(ctx); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	issued, byCampaign := map[string]int{}, map[string]int{}
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Action == "issued" {
			issued[fmt.Sprintf("%s v%d", r.Device, r.Version)]++
		}
		if r.Actor == "campaign:"+b.ID || strings.HasPrefix(r.Detail, "campaign "+b.ID) {
			byCampaign[r.Action]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for k, n := range issued {
		if n != 1 {
			t.Errorf("%s issued %d times", k, n)
		}
	}
	for action, n := range b.Audit {
		if byCampaign[action] != n {
			t.Errorf("campaign %s: %d %s records in the store, %d in the report", b.ID, byCampaign[action], action, n)
		}
	}
	revoked, active := 0, 0
	if err := st.ForEachDevice(ctx, func(d *store.Device) error {
		if d.Revoked {
			revoked++
			return nil
		}
		s := d.Slot(protocol.SlotIdentity)
		if o := s.Open(); o != nil {
			t.Errorf("%s: rotation to v%d still open", d.ID, o.Version)
		}
		if s.Active() != nil {
			active++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if revoked != 5 || active != devices-5 {
		t.Errorf("%d revoked, %d with an active identity; want 5, %d", revoked, active, devices-5)
	}
}
