package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// createAnchorsCampaign starts an anchors campaign replacing the CA and
// update keys over every device.
func createAnchorsCampaign(t *testing.T, f *fleettest.Fleet, stages string) adminapi.Campaign {
	t.Helper()
	st, err := adminapi.ParseStages(stages)
	if err != nil {
		t.Fatal(err)
	}
	camp, err := f.Admin.CreateCampaign(context.Background(), adminapi.CampaignRequest{Kind: adminapi.CampaignKindAnchors,
		Stages: st, MaxFailure: 0.5, MinReached: 1, DeviceTimeoutSeconds: 30, Roles: []string{"ca", "update"}})
	if err != nil {
		t.Fatal(err)
	}
	return camp
}

// rotateAndWait rotates the identity of ids and waits until each is
// active at the version after the one it had: the device verified every
// downlink of the rotation and the broker accepted its new certificate.
func rotateAndWait(t *testing.T, f *fleettest.Fleet, ids ...string) {
	t.Helper()
	ctx := context.Background()
	want := map[string]uint32{}
	for _, id := range ids {
		d, err := f.Admin.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = d.Active + 1
	}
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: ids}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "rotations of "+strings.Join(ids, ", ")+" activated", func() bool {
		for id, v := range want {
			if d, err := f.Admin.Device(ctx, id); err != nil || d.Active != v || !f.Broker().Present(id) {
				return false
			}
		}
		return true
	})
}

// anchorsOf returns each running agent's anchors version by device id.
func anchorsOf(agents []*device.Agent) map[string]uint32 {
	out := map[string]uint32{}
	for _, a := range agents {
		out[a.Keystore().ID().ID] = a.AnchorVersion()
	}
	return out
}

// Ten devices, an anchors campaign in stages 30%/100%. While stage 1
// waits on a device that hears nothing yet, only the stage-1 devices
// hold the new set and fleetd still serves the old one; devices on either
// set go through an identity rotation, before and after fleetd restarts. The campaign completes, the set
// is published, every device holds it; a device offline throughout comes
// back and converges; rotations work after. Rollback is refused. A second
// anchors campaign aborted in its first stage leaves every device
// connected and served, on whichever set it holds.
func TestAnchorsCampaign(t *testing.T) {
	f, dirs := campaignFleet(t, 10)
	const offline = "dev-05"
	var gate atomic.Bool // closed: dev-02 hears nothing
	var online []string
	var late string
	for _, d := range dirs {
		if filepath.Base(d) == offline {
			late = d
		} else {
			online = append(online, d)
		}
	}
	agents := runAgents(t, online, func(o *device.Options) {
		if filepath.Base(o.Dir) == "dev-02" {
			o.Link = func(dir string, payload []byte) [][]byte {
				if dir == "down" && !gate.Load() {
					return nil
				}
				return [][]byte{payload}
			}
		}
	})
	eventually(t, 30*time.Second, "9 agents connected", func() bool {
		for _, d := range online {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	ctx := context.Background()
	camp := createAnchorsCampaign(t, f, "30%,100%")

	// Stage 1 (dev-00..02): two hold v2, dev-02 hears nothing yet.
	eventually(t, 20*time.Second, "dev-00 and dev-01 on anchors v2", func() bool {
		v := anchorsOf(agents)
		return v["dev-00"] == 2 && v["dev-01"] == 2
	})
	c, err := f.Admin.Campaign(ctx, camp.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Stage != 0 || c.State != adminapi.CampaignStateRunning {
		t.Fatalf("campaign %s in stage %d, want running in stage 1", c.State, c.Stage+1)
	}
	for id, v := range anchorsOf(agents) {
		if id != "dev-00" && id != "dev-01" && v != 1 {
			t.Errorf("%s holds anchors v%d in stage 1, want v1", id, v)
		}
	}
	if info, err := f.Admin.Anchors(ctx); err != nil || info.Version != 1 || info.Prepared != 2 {
		t.Errorf("fleetd serves anchors v%d with v%d prepared (%v) during the campaign, want v1 and v2", info.Version, info.Prepared, err)
	}
	// A device on the new set and one on the old are both served, also
	// by a restarted fleetd (a new online key, certified under both
	// update keys: each device is answered with the delegation its set
	// verifies).
	rotateAndWait(t, f, "dev-00", "dev-03")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f.Restart(t)
	if v := f.Server.Trust().Prepared(); v != 2 {
		t.Fatalf("restarted with anchors v%d prepared, want v2", v)
	}
	rotateAndWait(t, f, "dev-01", "dev-04")
	if _, err := f.Admin.CampaignAction(ctx, camp.ID, adminapi.CampaignRollback); err == nil ||
		!strings.Contains(err.Error(), "no rollback") {
		t.Errorf("rollback of an anchors campaign: %v, want refused as having no rollback", err)
	}

	// dev-02 hears again: the campaign's nudge hands it the set, the
	// stage passes, the campaign completes and publishes the set.
	gate.Store(true)
	done := waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "campaign completed", func(c adminapi.Campaign) bool {
		return c.State == adminapi.CampaignStateCompleted
	})
	for id, s := range statuses(done) {
		if want := map[bool]string{true: "away", false: "succeeded"}[id == offline]; s != want {
			t.Errorf("%s is %s, want %s", id, s, want)
		}
	}
	if info, err := f.Admin.Anchors(ctx); err != nil || info.Version != 2 || info.Prepared != 0 {
		t.Errorf("fleetd serves anchors v%d with v%d prepared (%v) after the campaign, want v2 and none", info.Version, info.Prepared, err)
	}
	eventually(t, 20*time.Second, "every running agent on anchors v2", func() bool {
		for _, v := range anchorsOf(agents) {
			if v != 2 {
				return false
			}
		}
		return true
	})

	// The offline device comes back, catches up, and the campaign says so.
	back := runAgents(t, []string{late}, nil)
	waitCampaign(t, f.Admin, camp.ID, 30*time.Second, offline+" converged", func(c adminapi.Campaign) bool {
		return statuses(c)[offline] == "succeeded"
	})
	if v := back[0].AnchorVersion(); v != 2 {
		t.Errorf("%s holds anchors v%d after coming back, want v2", offline, v)
	}
	rotateAndWait(t, f, offline, "dev-01")

	// A second roll-out, aborted in stage 1 (dev-02 deaf again): devices
	// on v3 and on v2 stay connected and served; v2 stays published.
	gate.Store(false)
	camp2 := createAnchorsCampaign(t, f, "30%,100%")
	eventually(t, 20*time.Second, "dev-00 and dev-01 on anchors v3", func() bool {
		v := anchorsOf(agents)
		return v["dev-00"] == 3 && v["dev-01"] == 3
	})
	if c, err := f.Admin.CampaignAction(ctx, camp2.ID, adminapi.CampaignAbort); err != nil || c.State != adminapi.CampaignStateAborted {
		t.Fatalf("abort: %v, %+v", err, c)
	}
	gate.Store(true)
	time.Sleep(2 * time.Second) // a tick or two: nothing more is started
	if c, err := f.Admin.Campaign(ctx, camp2.ID, true); err != nil || c.StageProgress[1].Pending != c.StageProgress[1].Devices {
		t.Errorf("after abort: stage 2 %+v (%v), want every device pending", c.StageProgress[1], err)
	}
	if info, err := f.Admin.Anchors(ctx); err != nil || info.Version != 2 || info.Prepared != 3 {
		t.Errorf("fleetd serves anchors v%d with v%d prepared (%v) after the abort, want v2, and v3 prepared still", info.Version, info.Prepared, err)
	}
	rotateAndWait(t, f, "dev-00", "dev-04", offline)
	for _, d := range dirs {
		if !f.Broker().Present(filepath.Base(d)) {
			t.Errorf("%s not connected after the abort", filepath.Base(d))
		}
	}
	if n := len(auditRecords(t, f.Store(), "anchors-prepared")); n != 2 {
		t.Errorf("%d anchors-prepared audit records, want 2", n)
	}
	if n := len(auditRecords(t, f.Store(), "anchors-rotated")); n != 1 {
		t.Errorf("%d anchors-rotated audit records, want 1 (the first campaign's)", n)
	}
	if _, err := f.Store().VerifyAudit(ctx); err != nil {
		t.Error(err)
	}
}
