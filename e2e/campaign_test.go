package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
)

// campaignFleet starts fleetd with n devices dev-00.. and returns their
// keystore directories.
func campaignFleet(t *testing.T, n int) (*fleettest.Fleet, []string) {
	t.Helper()
	f := fleettest.StartFleet(t, func(c *server.Config) { c.OpsAddr = "127.0.0.1:0" })
	var dirs []string
	for i := range n {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("dev-%02d", i)))
	}
	return f, dirs
}

func createCampaign(t *testing.T, c *client.Client, stages, maxFailure, rate string, minReached int, timeout time.Duration) adminapi.Campaign {
	t.Helper()
	req := adminapi.CampaignRequest{Kind: adminapi.CampaignKindIdentity, MinReached: minReached, DeviceTimeoutSeconds: timeout.Seconds()}
	var err error
	if req.Stages, err = adminapi.ParseStages(stages); err != nil {
		t.Fatal(err)
	}
	if req.MaxFailure, err = adminapi.ParsePercent(maxFailure); err != nil {
		t.Fatal(err)
	}
	if req.Rate, err = adminapi.ParseRate(rate); err != nil {
		t.Fatal(err)
	}
	camp, err := c.CreateCampaign(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return camp
}

// waitCampaign polls until cond holds for the campaign.
func waitCampaign(t *testing.T, admin *client.Client, id string, timeout time.Duration, what string, cond func(adminapi.Campaign) bool) adminapi.Campaign {
	t.Helper()
	var last adminapi.Campaign
	deadline := time.Now().Add(timeout)
	for {
		c, err := admin.Campaign(context.Background(), id, true)
		if err == nil { // else fleetd may be restarting
			if last = c; cond(c) {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; campaign %s in stage %d (%s), %+v", timeout, what, last.State,
				last.Stage+1, last.Reason, last.StageProgress)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func statuses(c adminapi.Campaign) map[string]string {
	out := map[string]string{}
	for _, d := range c.Devices {
		out[d.ID] = d.Status
	}
	return out
}

// auditRecords lists the audit records whose action starts with prefix.
func auditRecords(t *testing.T, st store.Store, prefix string) []store.AuditRecord {
	t.Helper()
	var out []store.AuditRecord
	if err := st.ForEachAudit(context.Background(), 0, func(r *store.AuditRecord) error {
		if strings.HasPrefix(r.Action, prefix) {
			out = append(out, *r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// Thirty devices, stages 10%/50%/100%: three have no agent running. The
// campaign reports them away (one in each stage), completes without
// them, and they converge once their agents start; every step is audited.
func TestCampaignCompletesWithAwayDevices(t *testing.T) {
	f, dirs := campaignFleet(t, 30)
	away := map[string]bool{"dev-01": true, "dev-10": true, "dev-25": true}
	var present, absent []string
	for _, d := range dirs {
		if away[filepath.Base(d)] {
			absent = append(absent, d)
		} else {
			present = append(present, d)
		}
	}
	runAgents(t, present, nil)
	eventually(t, 30*time.Second, "27 agents connected", func() bool {
		for _, d := range present {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	camp := createCampaign(t, f.Admin, "10%,50%,100%", "2%", "6000/min", 2, 20*time.Second)
	if got := []int{camp.StageProgress[0].Devices, camp.StageProgress[1].Devices, camp.StageProgress[2].Devices}; !slices.Equal(got, []int{3, 12, 15}) {
		t.Fatalf("stage sizes %v, want 3, 12, 15", got)
	}
	done := waitCampaign(t, f.Admin, camp.ID, 90*time.Second, "campaign completed", func(c adminapi.Campaign) bool {
		return c.State == adminapi.CampaignStateCompleted
	})
	st := statuses(done)
	for id, s := range st {
		want := "succeeded"
		if away[id] {
			want = "away"
		}
		if s != want {
			t.Errorf("%s is %s, want %s", id, s, want)
		}
	}
	for i, p := range done.StageProgress {
		if p.Away != 1 || p.Failed != 0 || p.Succeeded != p.Devices-1 {
			t.Errorf("stage %d: %+v, want one away and the rest succeeded", i+1, p)
		}
	}
	if got := len(auditRecords(t, f.Store(), "campaign-stage")); got != 2 {
		t.Errorf("%d campaign-stage audit records, want 2", got)
	}
	if got := len(auditRecords(t, f.Store(), "campaign-completed")); got != 1 {
		t.Errorf("%d campaign-completed audit records, want 1", got)
	}

	// The away devices come back and converge; the campaign reports it.
	runAgents(t, absent, nil)
	done = waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "away devices converged", func(c adminapi.Campaign) bool {
		for id := range away {
			if statuses(c)[id] != "succeeded" {
				return false
			}
		}
		return true
	})
	if done.State != adminapi.CampaignStateCompleted {
		t.Errorf("state %s after convergence, want completed", done.State)
	}
	eventually(t, 30*time.Second, "every device active at version 2", allAt(t, f.Admin, 30, 2))
}

// The canary's agents are made to fail (they never see fleetd's
// downlinks, so their rotations time out while they are connected): the
// campaign pauses itself within the first stage and starts nobody else.
// Rollback cancels the open rotations; every device stays on a credential
// the broker accepts, and all of it is in the audit chain.
func TestCampaignCanaryFailurePausesAndRollsBack(t *testing.T) {
	f, dirs := campaignFleet(t, 30)
	canary := map[string]bool{"dev-00": true, "dev-01": true, "dev-02": true}
	runAgents(t, dirs, func(o *device.Options) {
		if canary[filepath.Base(o.Dir)] {
			o.Link = func(dir string, payload []byte) [][]byte {
				if dir == "down" {
					return nil
				}
				return [][]byte{payload}
			}
		}
	})
	eventually(t, 30*time.Second, "30 agents connected", func() bool {
		for _, d := range dirs {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	camp := createCampaign(t, f.Admin, "10%,50%,100%", "2%", "6000/min", 1, 3*time.Second)
	paused := waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "campaign paused", func(c adminapi.Campaign) bool {
		return c.State != adminapi.CampaignStateRunning
	})
	if paused.State != adminapi.CampaignStatePaused || paused.Stage != 0 {
		t.Fatalf("campaign %s in stage %d (%s), want paused in stage 1", paused.State, paused.Stage+1, paused.Reason)
	}
	if !strings.Contains(paused.Reason, "paused itself") {
		t.Errorf("reason %q", paused.Reason)
	}
	for id, s := range statuses(paused) {
		switch {
		case canary[id] && s != "failed" && s != "in-progress":
			t.Errorf("canary %s is %s", id, s)
		case !canary[id] && s != "pending":
			t.Errorf("%s outside the canary is %s, want pending", id, s)
		}
	}
	recs := auditRecords(t, f.Store(), "campaign-paused")
	if len(recs) != 1 || !strings.HasPrefix(recs[0].Actor, "campaign:") {
		t.Fatalf("campaign-paused audit records %+v, want one by the campaign itself", recs)
	}

	// The metrics name the campaign by its id: its self-pause, its canary
	// failures, and one campaign paused; the status page shows it paused
	// with its stages.
	base := "http://" + f.Server.OpsAddr()
	eventually(t, 10*time.Second, "the campaign's metrics", func() bool {
		m := scrape(t, base)
		pauses, _ := m.value("keyfleet_campaign_self_pauses_total", "campaign", camp.ID)
		failed, _ := m.value("keyfleet_campaign_devices_total", "campaign", camp.ID, "stage", "1", "result", "failed")
		later, ok := m.value("keyfleet_campaign_devices_total", "campaign", camp.ID, "stage", "2", "result", "failed")
		state, _ := m.value("keyfleet_campaigns", "state", "paused")
		return pauses == 1 && failed >= 1 && ok && later == 0 && state == 1
	})
	code, body := httpGet(base + "/")
	if code != http.StatusOK || !strings.Contains(body, camp.ID) || !strings.Contains(body, `class="state paused"`) ||
		!strings.Contains(body, "1 (10%)") || !strings.Contains(body, "3 (100%)") {
		t.Errorf("status page: %d, want campaign %s paused with its three stages:\n%s", code, camp.ID, body)
	}

	// Let the last canary time out too, if it has not, then roll back.
	time.Sleep(4 * time.Second)
	rb, err := f.Admin.CampaignAction(context.Background(), camp.ID, adminapi.CampaignRollback)
	if err != nil {
		t.Fatal(err)
	}
	if rb.State != adminapi.CampaignStateRolledBack {
		t.Fatalf("after rollback: %s", rb.State)
	}
	if _, err := f.Admin.CampaignAction(context.Background(), camp.ID, adminapi.CampaignResume); err == nil {
		t.Error("a rolled-back campaign resumed")
	}
	for _, d := range dirs {
		id := filepath.Base(d)
		rec, err := f.Store().GetDevice(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		s := rec.Slot(protocol.SlotIdentity)
		if open := s.Open(); open != nil {
			t.Errorf("%s still has an open rotation to v%d after the rollback", id, open.Version)
		}
		if a := s.Active(); a == nil || a.Version != 1 {
			t.Errorf("%s: active %+v, want version 1", id, a)
		}
	}
	eventually(t, 30*time.Second, "every agent connected with an accepted credential", func() bool {
		for _, d := range dirs {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	if n := len(auditRecords(t, f.Store(), "campaign-rolled-back")); n != 1 {
		t.Errorf("%d campaign-rolled-back audit records", n)
	}
	if n := len(auditRecords(t, f.Store(), "failed")) + len(auditRecords(t, f.Store(), "cancelled")); n != 3 {
		t.Errorf("%d canary rotations failed or cancelled in the audit, want 3", n)
	}
	if _, err := f.Store().VerifyAudit(context.Background()); err != nil {
		t.Error(err)
	}
}

// fleetd closed mid-campaign (in its second stage, paced by the rate)
// and started again resumes at the same stage and completes, with one
// version requested and issued per device.
func TestCampaignResumesAfterRestart(t *testing.T) {
	f, dirs := campaignFleet(t, 30)
	runAgents(t, dirs, nil)
	eventually(t, 30*time.Second, "30 agents connected", func() bool {
		for _, d := range dirs {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	// A device whose enroll was lost in the restart asks again after the
	// agent's step timeout (30 s): the device timeout leaves room for it.
	camp := createCampaign(t, f.Admin, "10%,50%,100%", "2%", "120/min", 1, 2*time.Minute)
	waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "campaign in its second stage", func(c adminapi.Campaign) bool {
		return c.Stage == 1 && c.StageProgress[1].Succeeded > 0 && c.StageProgress[1].Pending >= 4
	})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// What fleetd left in its store is where it must resume.
	bolt, err := store.OpenBolt(filepath.Join(f.Config.DataDir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	left, err := bolt.GetCampaign(context.Background(), camp.ID)
	bolt.Close()
	if err != nil {
		t.Fatal(err)
	}
	if left.Stage != 1 || left.State != store.CampaignRunning {
		t.Fatalf("fleetd closed with the campaign in stage %d, %s; want stage 2, running", left.Stage+1, left.State)
	}
	f.Restart(t)
	after, err := f.Admin.Campaign(context.Background(), camp.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if after.Stage != left.Stage || after.State != adminapi.CampaignStateRunning {
		t.Fatalf("after the restart: stage %d, %s; want stage %d, running", after.Stage+1, after.State, left.Stage+1)
	}
	succeeded := 0
	for _, d := range left.Devices {
		if d.Status == store.DeviceSucceeded {
			succeeded++
		}
	}
	if got := after.StageProgress[0].Succeeded + after.StageProgress[1].Succeeded; got < succeeded {
		t.Errorf("progress went back: %d succeeded before the restart, %d after", succeeded, got)
	}
	waitCampaign(t, f.Admin, camp.ID, 2*time.Minute, "campaign completed", func(c adminapi.Campaign) bool {
		return c.State == adminapi.CampaignStateCompleted
	})
	eventually(t, 30*time.Second, "every device active at version 2", allAt(t, f.Admin, 30, 2))
	seen := map[string]int{}
	for _, r := range auditRecords(t, f.Store(), "") {
		if r.Action == "requested" || r.Action == "issued" {
			seen[fmt.Sprintf("%s %s v%d", r.Action, r.Device, r.Version)]++
		}
	}
	if len(seen) != 60 {
		t.Errorf("%d distinct requested/issued records, want 60 (30 devices, one version each)", len(seen))
	}
	for k, n := range seen {
		if n != 1 || !strings.HasSuffix(k, " v2") {
			t.Errorf("%s: %d times", k, n)
		}
	}
}

// fleetd, a process of its own, is SIGKILLed in the second stage of a
// campaign (paced by the rate, with a rotation in flight) and started
// again on the same data directory and ports: the campaign is still in
// its second stage, completes, every device ends at version 2, and the
// audit chain shows each device's version 2 requested and issued once.
func TestCampaignResumesAfterSIGKILL(t *testing.T) {
	const n = 20
	dir := t.TempDir()
	fp := startFleetdProc(t, dir, "ckill")
	ctx := context.Background()
	var dirs []string
	for i := range n {
		d := filepath.Join(dir, "devices", fmt.Sprintf("dev-%02d", i))
		if _, err := provision.Device(ctx, fp.admin, filepath.Base(d), d, ""); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	trail := &eventTrail{}
	runAgents(t, dirs, func(o *device.Options) { o.OnEvent = trail.record })
	t.Cleanup(func() {
		if t.Failed() {
			trail.dump(t)
		}
	})
	eventually(t, 20*time.Second, "all agents connected", func() bool {
		s, err := fp.admin.Status(ctx)
		return err == nil && s.ConnectedClient >= n+1
	})
	// 2, 8 and 10 devices, one a second: the second stage lasts about
	// eight seconds. A device whose step was lost in the kill is nudged
	// after ten seconds, well inside the device timeout.
	camp := createCampaign(t, fp.admin, "10%,50%,100%", "2%", "60/min", 1, 2*time.Minute)
	killed := waitCampaign(t, fp.admin, camp.ID, 30*time.Second, "campaign in its second stage, a rotation in flight",
		func(c adminapi.Campaign) bool {
			p := c.StageProgress[1]
			return c.Stage == 1 && p.Succeeded > 0 && p.InProgress > 0 && p.Pending >= 3
		})
	fp.kill(t)
	t.Logf("killed fleetd in stage 2: %+v", killed.StageProgress[1])
	killedAt := time.Now()

	// What the killed fleetd left in its store is where it must resume.
	bolt, err := store.OpenBolt(datadir.Paths{Dir: fp.data}.Store(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	left, err := bolt.GetCampaign(ctx, camp.ID)
	bolt.Close()
	if err != nil {
		t.Fatal(err)
	}
	if left.Stage != 1 || left.State != store.CampaignRunning {
		t.Fatalf("fleetd killed with the campaign in stage %d, %s; want stage 2, running", left.Stage+1, left.State)
	}
	succeeded := 0
	for _, d := range left.Devices {
		if d.Status == store.DeviceSucceeded {
			succeeded++
		}
	}

	fp.run(t)
	fp.ready(t)
	after, err := fp.admin.Campaign(ctx, camp.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if after.Stage != 1 || after.State != adminapi.CampaignStateRunning {
		t.Fatalf("right after the restart: stage %d, %s (%s); want stage 2, running", after.Stage+1, after.State, after.Reason)
	}
	if got := after.StageProgress[0].Succeeded + after.StageProgress[1].Succeeded; got < succeeded {
		t.Errorf("progress went back: %d succeeded when killed, %d after the restart", succeeded, got)
	}
	done := waitCampaign(t, fp.admin, camp.ID, 45*time.Second, "campaign completed", func(c adminapi.Campaign) bool {
		return c.State != adminapi.CampaignStateRunning
	})
	t.Logf("campaign %s %v after the kill: %s", done.State, time.Since(killedAt).Round(time.Millisecond), done.Reason)
	if done.State != adminapi.CampaignStateCompleted {
		t.Fatalf("campaign %s in stage %d (%s), want completed", done.State, done.Stage+1, done.Reason)
	}
	for id, s := range statuses(done) {
		if s != "succeeded" {
			t.Errorf("%s is %s in the campaign, want succeeded", id, s)
		}
	}
	eventually(t, 15*time.Second, "every device active at version 2", allAt(t, fp.admin, n, 2))

	// Stop fleetd and read its store: the chain verifies and each device's
	// version 2 was requested once and issued once, no other version.
	fp.stop(t)
	st, err := store.OpenBolt(datadir.Paths{Dir: fp.data}.Store(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := issuedOnce(t, st); got != n {
		t.Errorf("certificates issued: got %d, want %d", got, n)
	}
	seen := map[string]int{}
	for _, r := range auditRecords(t, st, "") {
		if r.Action == "requested" || r.Action == "issued" {
			seen[fmt.Sprintf("%s %s v%d", r.Action, r.Device, r.Version)]++
		}
	}
	for _, d := range dirs {
		for _, action := range []string{"requested", "issued"} {
			if k := fmt.Sprintf("%s %s v2", action, filepath.Base(d)); seen[k] != 1 {
				t.Errorf("%s: %d times, want once", k, seen[k])
			}
		}
	}
	if len(seen) != 2*n {
		t.Errorf("%d distinct requested/issued records, want %d (one version per device): %v", len(seen), 2*n, seen)
	}
	for _, d := range dirs {
		ks, err := device.OpenKeystore(d)
		if err != nil {
			t.Fatal(err)
		}
		if s := ks.State(); s.Active != 2 || s.Pending != 0 {
			t.Errorf("%s: keystore state %+v, want active 2", d, s)
		}
	}
}
