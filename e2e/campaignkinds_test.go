package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/store"
)

// createKindCampaign creates a campaign of kind over every device, in
// stages, with no failure tolerated.
func createKindCampaign(t *testing.T, c *client.Client, kind string, release uint32, stages string, timeout time.Duration) adminapi.Campaign {
	t.Helper()
	st, err := adminapi.ParseStages(stages)
	if err != nil {
		t.Fatal(err)
	}
	camp, err := c.CreateCampaign(context.Background(), adminapi.CampaignRequest{Kind: kind, Release: release, Stages: st,
		MinReached: 1, DeviceTimeoutSeconds: timeout.Seconds()})
	if err != nil {
		t.Fatal(err)
	}
	return camp
}

// recoveries returns the count of M10 observations in slot.
func recoveries(t *testing.T, base, slot string) float64 {
	t.Helper()
	v, _ := scrape(t, base).value("keyfleet_recovery_duration_seconds", "slot", slot)
	return v
}

// Ten devices, a data-key campaign in two stages: it completes and every
// device encrypts with the new primary. A second campaign, rolled back
// after it completed, leaves every device on the previous primary again
// (the new version decrypt-only), audited, with the recovery time (M10)
// in /metrics under slot data.
func TestDataKeyCampaignAndRollback(t *testing.T) {
	const n = 10
	f, dirs := campaignFleet(t, n)
	agents := runAgents(t, dirs, nil)
	ctx := context.Background()
	eventually(t, 30*time.Second, "10 agents connected", func() bool {
		for _, d := range dirs {
			if !f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
	primaries := func(want uint32) func() bool {
		return func() bool {
			for i, a := range agents {
				d, err := f.Store().GetDevice(ctx, filepath.Base(dirs[i]))
				if err != nil || a.DataKeys().PrimaryVersion() != want || d.DataPrimary != want {
					return false
				}
			}
			return true
		}
	}
	// A first data key, fleet-wide, so that a rollback has one to go back to.
	if _, err := f.Admin.RotateDataKeys(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "every device reports data key v1 primary", primaries(1))

	camp := createKindCampaign(t, f.Admin, adminapi.CampaignKindDataKey, 0, "50%,100%", 20*time.Second)
	if camp.Kind != adminapi.CampaignKindDataKey || len(camp.StageProgress) != 2 || camp.StageProgress[0].Devices != 5 {
		t.Fatalf("campaign %+v, want a data-key campaign of 5 and 5 devices", camp)
	}
	done := waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "data-key campaign completed", func(c adminapi.Campaign) bool {
		return c.State != adminapi.CampaignStateRunning
	})
	if done.State != adminapi.CampaignStateCompleted {
		t.Fatalf("campaign %s (%s), want completed", done.State, done.Reason)
	}
	for id, s := range statuses(done) {
		if s != "succeeded" {
			t.Errorf("%s is %s, want succeeded", id, s)
		}
	}
	if !primaries(2)() {
		t.Fatal("campaign completed but not every device reports data key v2 primary")
	}

	// A second one, rolled back once complete: v2 is primary again.
	before := recoveries(t, "http://"+f.Server.OpsAddr(), "data")
	camp = createKindCampaign(t, f.Admin, adminapi.CampaignKindDataKey, 0, "50%,100%", 20*time.Second)
	waitCampaign(t, f.Admin, camp.ID, 60*time.Second, "second campaign completed", func(c adminapi.Campaign) bool {
		return c.State == adminapi.CampaignStateCompleted
	})
	eventually(t, 10*time.Second, "every device reports data key v3 primary", primaries(3))
	rb, err := f.Admin.CampaignAction(ctx, camp.ID, adminapi.CampaignRollback)
	if err != nil {
		t.Fatal(err)
	}
	for id, s := range statuses(rb) {
		if s != "cancelled" {
			t.Errorf("%s is %s after the rollback, want cancelled (rolled back)", id, s)
		}
	}
	rec := waitCampaign(t, f.Admin, camp.ID, 30*time.Second, "rollback recovered", func(c adminapi.Campaign) bool {
		return c.RecoveredAt != nil
	})
	if !primaries(2)() {
		t.Fatal("recovered, but not every device reports data key v2 primary")
	}
	for _, d := range dirs {
		rec, err := f.Store().GetDevice(ctx, filepath.Base(d))
		if err != nil {
			t.Fatal(err)
		}
		if k := rec.DataKey(3); k == nil || k.Status != store.DataKeyDecryptOnly {
			t.Errorf("%s: v3 %+v, want decrypt-only", rec.ID, k)
		}
		if k := rec.DataKey(2); k == nil || k.Status != store.DataKeyPrimary {
			t.Errorf("%s: v2 %+v, want primary", rec.ID, k)
		}
	}
	took := rec.RecoveredAt.Sub(*rec.RolledBackAt)
	t.Logf("data-key rollback recovered in %v", took)
	base := "http://" + f.Server.OpsAddr()
	if got := recoveries(t, base, "data"); got != before+1 {
		t.Errorf("keyfleet_recovery_duration_seconds{slot=data}: %v observations, want %v", got, before+1)
	}
	if got := len(auditRecords(t, f.Store(), "data-key-reverted")); got != n {
		t.Errorf("%d data-key-reverted audit records, want %d", got, n)
	}
	if got := len(auditRecords(t, f.Store(), "campaign-recovered")); got != 1 {
		t.Errorf("%d campaign-recovered audit records, want 1", got)
	}
	if _, err := f.Store().VerifyAudit(ctx); err != nil {
		t.Error(err)
	}
}

// firmwareAgents starts an agent with firmware updates per directory,
// factory version 1, each stoppable on its own.
type firmwareAgents struct {
	images sync.Map // uri -> image
	stop   map[string]context.CancelFunc
	agents map[string]*device.Agent
}

func startFirmwareAgents(t *testing.T, fa *firmwareAgents, dirs []string) {
	t.Helper()
	for _, d := range dirs {
		ctx, cancel := context.WithCancel(context.Background())
		a, err := device.New(device.Options{Dir: d, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond,
			ReconnectMax: time.Second, Firmware: &device.FirmwareOptions{Dir: filepath.Join(d, "fw"),
				Identity: firmware.Identity{VendorID: firmware.UUID{0xa}, ClassID: firmware.UUID{0xb}, FactoryVersion: 1},
				Fetch: func(_ context.Context, uri string) ([]byte, error) {
					v, ok := fa.images.Load(uri)
					if !ok {
						return nil, fmt.Errorf("no image at %s", uri)
					}
					return v.([]byte), nil
				}}})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
		id := filepath.Base(d)
		fa.stop[id] = func() { cancel(); wg.Wait() }
		fa.agents[id] = a
		t.Cleanup(fa.stop[id])
	}
}

// release publishes (or stages) version v of an image.
func (fa *firmwareAgents) release(t *testing.T, c *client.Client, v uint32, staged bool) {
	t.Helper()
	img := fmt.Appendf(nil, "firmware build %d", v)
	uri := fmt.Sprintf("test://fw/%d", v)
	fa.images.Store(uri, img)
	d := sha256.Sum256(img)
	if _, err := c.PublishFirmware(context.Background(), adminapi.FirmwareRequest{Vendor: firmware.UUID{0xa}.String(),
		Class: firmware.UUID{0xb}.String(), Version: v, Digest: d[:], Size: uint64(len(img)), URI: uri, Staged: staged}); err != nil {
		t.Fatalf("publish v%d: %v", v, err)
	}
}

// Six firmware devices on release 2. Release 3, staged, rolled out in two
// stages: while the first stage waits for a device that is off, only its
// devices are pinned to and run release 3; the campaign completes and
// release 3 becomes the fleet's. Release 4 goes the same way, but is
// rolled back in its first stage: the devices that installed it get a
// rollback release (release 3's image as version 5, which their
// anti-rollback rule accepts), the others stay on 3; nobody runs 4, the
// fleet's release is still 3, and the recovery time (M10) is in /metrics
// under slot firmware. Release 6 completes (the fleet's release) and is
// rolled back: the rollback release becomes the fleet's.
func TestFirmwareCampaignAndRollback(t *testing.T) {
	f, dirs := campaignFleet(t, 6)
	ctx := context.Background()
	fa := &firmwareAgents{stop: map[string]context.CancelFunc{}, agents: map[string]*device.Agent{}}
	startFirmwareAgents(t, fa, dirs)
	running := func(id string) uint32 {
		d, err := f.Store().GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return d.Firmware
	}
	all := func(ok func(id string, v uint32) bool) func() bool {
		return func() bool {
			for _, d := range dirs {
				if id := filepath.Base(d); !ok(id, running(id)) {
					return false
				}
			}
			return true
		}
	}
	fa.release(t, f.Admin, 2, false)
	eventually(t, 20*time.Second, "every device runs release 2", all(func(_ string, v uint32) bool { return v == 2 }))

	// Release 3, staged: nobody gets it until a campaign names it.
	fa.release(t, f.Admin, 3, true)
	if _, err := f.Admin.CreateCampaign(ctx, adminapi.CampaignRequest{Kind: adminapi.CampaignKindFirmware, Release: 9,
		Stages: []float64{1}, DeviceTimeoutSeconds: 5}); err == nil {
		t.Error("a firmware campaign of an unpublished release was created")
	}
	fa.stop["dev-02"]() // in the first stage: it holds the stage for the device timeout
	camp := createKindCampaign(t, f.Admin, adminapi.CampaignKindFirmware, 3, "50%,100%", 4*time.Second)
	if camp.Release != 3 {
		t.Errorf("campaign release %d, want 3", camp.Release)
	}
	eventually(t, 20*time.Second, "the first stage's connected devices run release 3", func() bool {
		return running("dev-00") == 3 && running("dev-01") == 3
	})
	stage1, err := f.Admin.Campaign(ctx, camp.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if stage1.Stage != 0 {
		t.Fatalf("campaign in stage %d before dev-02 timed out", stage1.Stage+1)
	}
	for _, id := range []string{"dev-03", "dev-04", "dev-05"} {
		d, err := f.Store().GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Firmware != 2 || d.FirmwarePin != 0 {
			t.Errorf("%s in stage 2 runs %d pinned to %d while stage 1 runs; want 2, unpinned", id, d.Firmware, d.FirmwarePin)
		}
	}
	if cur, _ := f.Server.Releases().CurrentFirmware(); cur != 2 {
		t.Errorf("the fleet's release is %d during the campaign, want 2", cur)
	}
	done := waitCampaign(t, f.Admin, camp.ID, 30*time.Second, "firmware campaign completed", func(c adminapi.Campaign) bool {
		return c.State != adminapi.CampaignStateRunning
	})
	if done.State != adminapi.CampaignStateCompleted || statuses(done)["dev-02"] != "away" {
		t.Fatalf("campaign %s (%s), dev-02 %s; want completed with dev-02 away", done.State, done.Reason, statuses(done)["dev-02"])
	}
	if cur, _ := f.Server.Releases().CurrentFirmware(); cur != 3 {
		t.Errorf("the fleet's release is %d after the campaign, want 3", cur)
	}
	startFirmwareAgents(t, fa, dirs[2:3])
	eventually(t, 20*time.Second, "every device runs release 3", all(func(_ string, v uint32) bool { return v == 3 }))

	// Release 4, rolled back in its first stage.
	fa.release(t, f.Admin, 4, true)
	fa.stop["dev-02"]()
	before := recoveries(t, "http://"+f.Server.OpsAddr(), "firmware")
	camp = createKindCampaign(t, f.Admin, adminapi.CampaignKindFirmware, 4, "50%,100%", 5*time.Second)
	eventually(t, 20*time.Second, "dev-00 and dev-01 run release 4", func() bool {
		return running("dev-00") == 4 && running("dev-01") == 4
	})
	rb, err := f.Admin.CampaignAction(ctx, camp.ID, adminapi.CampaignRollback)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Stage != 0 || rb.State != adminapi.CampaignStateRolledBack {
		t.Fatalf("rolled back in stage %d, %s", rb.Stage+1, rb.State)
	}
	rec := waitCampaign(t, f.Admin, camp.ID, 30*time.Second, "rollback recovered", func(c adminapi.Campaign) bool {
		return c.RecoveredAt != nil
	})
	accepted := func(id string, v uint32) bool { return id == "dev-02" || v == 3 || v == 5 }
	if !all(accepted)() {
		t.Fatal("recovered, but a connected device runs neither release 3 nor the rollback release 5")
	}
	if running("dev-00") != 5 || running("dev-01") != 5 || running("dev-03") != 3 {
		t.Errorf("dev-00 %d, dev-01 %d, dev-03 %d; want 5, 5 (rollback release), 3", running("dev-00"), running("dev-01"), running("dev-03"))
	}
	if cur, _ := f.Server.Releases().CurrentFirmware(); cur != 3 {
		t.Errorf("the fleet's release is %d after the rollback, want 3", cur)
	}
	startFirmwareAgents(t, fa, dirs[2:3]) // pinned to 4 while off, unpinned by the rollback: stays on 3
	time.Sleep(time.Second)
	eventually(t, 10*time.Second, "dev-02 back on release 3", func() bool { return running("dev-02") == 3 })
	t.Logf("firmware rollback recovered in %v", rec.RecoveredAt.Sub(*rec.RolledBackAt))
	if got := recoveries(t, "http://"+f.Server.OpsAddr(), "firmware"); got != before+1 {
		t.Errorf("keyfleet_recovery_duration_seconds{slot=firmware}: %v observations, want %v", got, before+1)
	}

	// Release 6, rolled out to every device and so the fleet's, then
	// rolled back: release 3's image as 7 becomes the fleet's, everyone
	// runs it.
	fa.release(t, f.Admin, 6, true)
	camp = createKindCampaign(t, f.Admin, adminapi.CampaignKindFirmware, 6, "100%", 5*time.Second)
	waitCampaign(t, f.Admin, camp.ID, 30*time.Second, "release 6 campaign completed", func(c adminapi.Campaign) bool {
		return c.State == adminapi.CampaignStateCompleted
	})
	if cur, _ := f.Server.Releases().CurrentFirmware(); cur != 6 {
		t.Fatalf("the fleet's release is %d after the campaign, want 6", cur)
	}
	if _, err := f.Admin.CampaignAction(ctx, camp.ID, adminapi.CampaignRollback); err != nil {
		t.Fatal(err)
	}
	waitCampaign(t, f.Admin, camp.ID, 30*time.Second, "rollback of release 6 recovered", func(c adminapi.Campaign) bool {
		return c.RecoveredAt != nil
	})
	if !all(func(_ string, v uint32) bool { return v == 7 })() {
		t.Error("recovered, but not every device runs the rollback release 7")
	}
	if cur, _ := f.Server.Releases().CurrentFirmware(); cur != 7 {
		t.Errorf("the fleet's release is %d after rolling back a completed campaign, want the rollback release 7", cur)
	}
	if got := recoveries(t, "http://"+f.Server.OpsAddr(), "firmware"); got != before+2 {
		t.Errorf("keyfleet_recovery_duration_seconds{slot=firmware}: %v observations, want %v", got, before+2)
	}
	if n := len(auditRecords(t, f.Store(), "firmware-reverted")); n != 2 {
		t.Errorf("%d firmware-reverted audit records, want 2", n)
	}
	if _, err := f.Store().VerifyAudit(ctx); err != nil {
		t.Error(err)
	}
}
