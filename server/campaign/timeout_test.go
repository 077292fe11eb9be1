package campaign_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// clock is a settable time for the services of one test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestDeviceTimeoutCountsFromRestart: a device started by a fleetd that
// then stopped for longer than the device timeout is not failed by the
// next fleetd at once (it could not finish while fleetd was down, and its
// agent is reconnecting); its timeout runs from the new fleetd's start.
func TestDeviceTimeoutCountsFromRestart(t *testing.T) {
	clk := &clock{now: time.Now()}
	st, esc, push := dataKeyFleet(t, clk.Now, "d1")
	ctx := context.Background()
	service := func() *campaign.Service {
		return campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now,
			Kinds: map[string]campaign.Kind{campaign.KindDataKey: campaign.DataKey{Escrow: esc, Engine: push}}})
	}
	first := service()
	c, err := first.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	first.Step(ctx)
	status := func() store.CampaignDeviceStatus {
		t.Helper()
		got, err := st.GetCampaign(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Devices[0].Status
	}
	if s := status(); s != store.DeviceInProgress {
		t.Fatalf("after the first step d1 is %s, want in progress", s)
	}

	clk.Add(5 * time.Minute) // fleetd was down five device timeouts
	second := service()
	second.Step(ctx)
	if s := status(); s != store.DeviceInProgress {
		t.Fatalf("right after the restart d1 is %s, want still in progress", s)
	}
	clk.Add(59 * time.Second)
	second.Step(ctx)
	if s := status(); s != store.DeviceInProgress {
		t.Fatalf("59 s after the restart d1 is %s, want still in progress", s)
	}
	clk.Add(2 * time.Second)
	second.Step(ctx)
	if s := status(); s != store.DeviceFailed {
		t.Fatalf("61 s after the restart d1 is %s, want failed (timed out while connected)", s)
	}
}

// sessions are connected devices with the time each session began.
type sessions struct {
	mu    sync.Mutex
	since map[string]time.Time
}

func (s *sessions) Present(device string) bool { _, ok := s.ConnectedSince(device); return ok }
func (s *sessions) ConnectedSince(device string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.since[device]
	return at, ok
}
func (s *sessions) connect(device string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.since[device] = at
}

// TestDeviceTimeoutWhileConnected: a device fails as timed out only once
// it was connected for the whole timeout. One that reconnected within it
// gets more time; one that keeps reconnecting counts as away after two
// timeouts, so it never holds its stage.
func TestDeviceTimeoutWhileConnected(t *testing.T) {
	clk := &clock{now: time.Now()}
	t0 := clk.Now()
	st, esc, push := dataKeyFleet(t, clk.Now, "steady", "flapping")
	ctx := context.Background()
	sess := &sessions{since: map[string]time.Time{"steady": t0, "flapping": t0}}
	svc := campaign.New(campaign.Options{Store: st, Sessions: sess, Now: clk.Now,
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: campaign.DataKey{Escrow: esc, Engine: push}}})
	c, err := svc.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	svc.Step(ctx)
	status := func() map[string]store.CampaignDeviceStatus {
		t.Helper()
		got, err := st.GetCampaign(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]store.CampaignDeviceStatus{}
		for _, d := range got.Devices {
			out[d.ID] = d.Status
		}
		return out
	}
	for _, step := range []struct {
		at               time.Duration // after the start
		reconnect        []string
		steady, flapping store.CampaignDeviceStatus
	}{
		{at: 50 * time.Second, reconnect: []string{"steady", "flapping"},
			steady: store.DeviceInProgress, flapping: store.DeviceInProgress},
		// Past the timeout, but both reconnected 11 s ago.
		{at: 61 * time.Second, steady: store.DeviceInProgress, flapping: store.DeviceInProgress},
		{at: 100 * time.Second, reconnect: []string{"flapping"},
			steady: store.DeviceInProgress, flapping: store.DeviceInProgress},
		// steady has been connected for 61 s: timed out while connected.
		{at: 111 * time.Second, steady: store.DeviceFailed, flapping: store.DeviceInProgress},
		// Two timeouts gone and flapping connected for only 21 s: away.
		{at: 121 * time.Second, steady: store.DeviceFailed, flapping: store.DeviceAway},
	} {
		clk.Add(t0.Add(step.at).Sub(clk.Now()))
		for _, id := range step.reconnect {
			sess.connect(id, clk.Now())
		}
		svc.Step(ctx)
		got := status()
		if got["steady"] != step.steady || got["flapping"] != step.flapping {
			t.Fatalf("at %v: steady %s, flapping %s; want %s, %s", step.at, got["steady"], got["flapping"], step.steady, step.flapping)
		}
	}
}

// dataKeyFleet makes devices ids in a real bbolt store, and an escrow over
// soft keys whose pushes are counted: what a data-key campaign runs on.
func dataKeyFleet(t *testing.T, now func() time.Time, ids ...string) (*store.Bolt, *escrow.Escrow, *pushes) {
	t.Helper()
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, id := range ids {
		if err := st.CreateDevice(context.Background(), &store.Device{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	esc, err := escrow.New(keys, st, policy.Default(), now)
	if err != nil {
		t.Fatal(err)
	}
	push := &pushes{n: map[string]int{}}
	esc.SetHooks(escrow.Hooks{Push: push})
	return st, esc, push
}
