package campaign_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// releases answers the firmware kind's questions about releases: current
// 3, 5 reverting 4.
type releases struct{}

func (releases) CurrentFirmware() (uint32, []byte) { return 3, nil }
func (releases) Known(v uint32) bool               { return v >= 3 && v <= 5 }
func (releases) Promote(context.Context, uint32, string) error {
	return nil
}
func (releases) Revert(context.Context, uint32, uint32, string) (uint32, error) { return 5, nil }
func (releases) Reverted(running uint32) bool                                   { return running == 4 }

// TestKindOutcomes reads each kind's outcome and recovery from device
// records, as the runner does.
func TestKindOutcomes(t *testing.T) {
	dk := func(v uint32, s store.DataKeyStatus) *store.DataKey {
		return &store.DataKey{Version: v, Status: s, Wrapped: []byte{1}}
	}
	fw := campaign.Firmware{Releases: releases{}, Release: 4, Previous: 3}
	for _, tc := range []struct {
		name      string
		kind      campaign.Kind
		d         store.Device
		version   uint32
		want      campaign.Outcome
		recovered bool
	}{
		{"data key sent, not confirmed", campaign.DataKey{},
			store.Device{DataPrimary: 1, DataKeys: []*store.DataKey{dk(1, store.DataKeyDecryptOnly), dk(2, store.DataKeyPrimary)}},
			2, campaign.Open, false},
		{"data key confirmed", campaign.DataKey{},
			store.Device{DataPrimary: 2, DataKeys: []*store.DataKey{dk(1, store.DataKeyDecryptOnly), dk(2, store.DataKeyPrimary)}},
			2, campaign.Succeeded, true},
		{"data key reverted, device back on v1", campaign.DataKey{},
			store.Device{DataPrimary: 1, DataKeys: []*store.DataKey{dk(1, store.DataKeyPrimary), dk(2, store.DataKeyDecryptOnly)}},
			2, campaign.Failed, true},
		{"data key reverted, device still on v2", campaign.DataKey{},
			store.Device{DataPrimary: 2, DataKeys: []*store.DataKey{dk(1, store.DataKeyPrimary), dk(2, store.DataKeyDecryptOnly)}},
			2, campaign.Succeeded, false},
		{"data key of a revoked device", campaign.DataKey{},
			store.Device{Revoked: true, DataKeys: []*store.DataKey{dk(2, store.DataKeyPrimary)}}, 2, campaign.Failed, false},
		{"firmware pinned, not installed", fw, store.Device{Firmware: 3, FirmwarePin: 4}, 4, campaign.Open, true},
		{"firmware installed", fw, store.Device{Firmware: 4, FirmwarePin: 4}, 4, campaign.Succeeded, false},
		{"firmware unpinned before installing", fw, store.Device{Firmware: 3}, 4, campaign.Failed, true},
		{"firmware on the rollback release", fw, store.Device{Firmware: 5}, 4, campaign.Succeeded, true},
		{"firmware of a revoked device", fw, store.Device{Revoked: true, Firmware: 3, FirmwarePin: 4}, 4, campaign.Failed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, why := tc.kind.Outcome(&tc.d, tc.version); got != tc.want {
				t.Errorf("outcome %v (%s), want %v", got, why, tc.want)
			}
			if got := tc.kind.(campaign.Reverter).Recovered(&tc.d, tc.version); got != tc.recovered {
				t.Errorf("recovered %v, want %v", got, tc.recovered)
			}
		})
	}
}

// pushes records the devices whose data keys the engine was asked to
// send (there is no broker here).
type pushes struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *pushes) PushDataKeys(_ context.Context, device string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n[device]++
	return nil
}

// connected says every device is connected, as the embedded broker
// would for a fleet that is up.
type connected struct{}

func (connected) Present(string) bool { return true }

// observer records what the runner reports.
type observer struct {
	mu        sync.Mutex
	recovered []lifecycle.SlotKind
}

func (o *observer) DeviceFinished(string, int, string) {}
func (o *observer) SelfPaused(string)                  {}
func (o *observer) Campaigns([]*store.Campaign)        {}
func (o *observer) Recovered(_ string, slot lifecycle.SlotKind, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.recovered = append(o.recovered, slot)
}

// TestDataKeyCampaignRollback: a data-key campaign over four devices, in
// two stages, on a real store and escrow. The second stage starts only
// once the first one's devices report the new primary; the campaign
// completes; its rollback makes the previous version primary again on
// every device, finished ones included, and the recovery time is
// reported once every device connected reports it.
func TestDataKeyCampaignRollback(t *testing.T) {
	ids := []string{"d1", "d2", "d3", "d4"}
	st, esc, push := dataKeyFleet(t, time.Now, ids...)
	ctx := context.Background()
	if _, err := esc.RotateDataKeys(ctx, "admin:test"); err != nil { // v1 everywhere
		t.Fatal(err)
	}
	// report plays a device's hello: the primary it encrypts with, as the
	// engine records it.
	report := func(id string, primary uint32) {
		t.Helper()
		if _, err := st.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
			d.DataPrimary, d.LastSeen = primary, time.Now()
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		report(id, 1)
	}
	obs := &observer{}
	svc := campaign.New(campaign.Options{Store: st, Observer: obs, Sessions: connected{},
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: campaign.DataKey{Escrow: esc, Engine: push}}})
	if _, err := svc.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{0.5, 1}, MinReached: 1,
		DeviceTimeout: time.Minute, Release: 3}, "admin:test"); err == nil {
		t.Error("a data-key campaign with a release was created")
	}
	c, err := svc.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{0.5, 1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	get := func() *store.Campaign {
		t.Helper()
		c, err := svc.Get(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	svc.Step(ctx)
	got := get()
	for i, cd := range got.Devices {
		want := store.DeviceInProgress
		if i >= 2 {
			want = store.DevicePending
		}
		if cd.Status != want || (i < 2 && cd.Version != 2) {
			t.Fatalf("after the first step %s is %s at v%d, want %s", cd.ID, cd.Status, cd.Version, want)
		}
	}
	if push.n["d1"] != 2 || push.n["d3"] != 1 {
		t.Errorf("pushes %v: want d1's new key pushed, d3's not yet", push.n)
	}
	svc.Step(ctx)
	if got := get(); got.Stage != 0 {
		t.Fatalf("stage %d before the first stage's devices confirmed", got.Stage+1)
	}
	report("d1", 2)
	report("d2", 2)
	svc.Step(ctx) // stage 1 done, stage 2 started
	svc.Step(ctx)
	report("d3", 2)
	report("d4", 2)
	svc.Step(ctx)
	if got := get(); got.State != store.CampaignCompleted {
		t.Fatalf("campaign %s (%s), want completed", got.State, got.Reason)
	}

	rb, err := svc.Rollback(ctx, c.ID, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	for _, cd := range rb.Devices {
		if cd.Status != store.DeviceCancelled {
			t.Errorf("%s is %s after the rollback, want cancelled", cd.ID, cd.Status)
		}
		d, err := st.GetDevice(ctx, cd.ID)
		if err != nil {
			t.Fatal(err)
		}
		if k1, k2 := d.DataKey(1), d.DataKey(2); k1.Status != store.DataKeyPrimary || k2.Status != store.DataKeyDecryptOnly {
			t.Errorf("%s: v1 %v, v2 %v; want primary, decrypt-only", cd.ID, k1.Status, k2.Status)
		}
	}
	svc.Step(ctx)
	if !get().RecoveredAt.IsZero() || len(obs.recovered) != 0 {
		t.Fatal("recovered before the devices reported the previous primary")
	}
	for _, id := range ids {
		report(id, 1)
	}
	svc.Step(ctx)
	if got := get(); got.RecoveredAt.IsZero() || len(obs.recovered) != 1 || obs.recovered[0] != lifecycle.SlotData {
		t.Fatalf("recovered at %v, observed %v; want recovered once in slot data", got.RecoveredAt, obs.recovered)
	}
	svc.Step(ctx)
	if len(obs.recovered) != 1 {
		t.Errorf("recovery observed %d times, want once", len(obs.recovered))
	}
}
