package campaign_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Several fleetd processes share one store: each has its own
// campaign.Service, an operator may act through any of them, and the
// leader's runner must not overwrite what they did. These tests run two
// Services on one bbolt store.

// hooked is a Kind that runs a hook in Start and Rollback: the other
// process's action that lands in the middle of a step.
type hooked struct {
	campaign.Kind
	onStart, onRollback func()
	rollbacks           map[string]int
	mu                  sync.Mutex
}

func (k *hooked) Start(ctx context.Context, device, actor string) (uint32, error) {
	if k.onStart != nil {
		k.onStart()
	}
	return k.Kind.Start(ctx, device, actor)
}

func (k *hooked) Rollback(ctx context.Context, device string, version uint32, actor string) (bool, error) {
	k.mu.Lock()
	k.rollbacks[device]++
	k.mu.Unlock()
	if k.onRollback != nil {
		k.onRollback()
	}
	return k.Kind.Rollback(ctx, device, version, actor)
}

// TestSaveKeepsOperatorPause: an operator's Pause made through another
// process while a step runs is kept: the step's save finds the record
// changed and is dropped, and the step is done again once resumed, with
// the versions the dropped step asked for recovered from the devices.
func TestSaveKeepsOperatorPause(t *testing.T) {
	clk := &clock{now: time.Now()}
	st, esc, push := dataKeyFleet(t, clk.Now, "d1", "d2")
	ctx := context.Background()
	kind := campaign.DataKey{Escrow: esc, Engine: push}
	other := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now,
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: kind}})
	var id string
	var once sync.Once
	leader := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now,
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: &hooked{Kind: kind, rollbacks: map[string]int{}, onStart: func() {
			once.Do(func() {
				if _, err := other.Pause(ctx, id, "admin:other"); err != nil {
					t.Errorf("pause through the other process: %v", err)
				}
			})
		}}}})
	c, err := leader.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	id = c.ID
	leader.Step(ctx)
	got, err := st.GetCampaign(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.CampaignPaused || got.Reason != "paused by the operator" {
		t.Fatalf("after the step: %s (%q), want paused by the operator", got.State, got.Reason)
	}
	for _, d := range got.Devices {
		if d.Status != store.DeviceInProgress || d.Version != 0 {
			t.Errorf("%s: %s v%d, want in progress as recorded before the pause, version not yet recorded", d.ID, d.Status, d.Version)
		}
	}
	if _, err := other.Resume(ctx, id, "admin:other"); err != nil {
		t.Fatal(err)
	}
	leader.Step(ctx)
	if got, err = st.GetCampaign(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, d := range got.Devices {
		if d.Status != store.DeviceInProgress || d.Version != 1 {
			t.Errorf("after resuming, %s: %s v%d, want in progress to v1 (the key asked for before the pause, not another)", d.ID, d.Status, d.Version)
		}
	}
}

// TestRollbackAfterOtherWrite: a rollback whose record another process
// changed meanwhile is done again from the new record, asking each device
// once, and counts every device it rolled back.
func TestRollbackAfterOtherWrite(t *testing.T) {
	clk := &clock{now: time.Now()}
	st, esc, push := dataKeyFleet(t, clk.Now, "d1", "d2", "d3")
	ctx := context.Background()
	if _, err := esc.RotateDataKeys(ctx, "admin:test"); err != nil { // v1 everywhere: a key to go back to
		t.Fatal(err)
	}
	for _, d := range []string{"d1", "d2", "d3"} { // each device reports it
		if _, err := st.UpdateDevice(ctx, d, func(d *store.Device) ([]store.Event, error) {
			d.DataPrimary = 1
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(time.Second) // the campaign's keys are made after these
	kind := campaign.DataKey{Escrow: esc, Engine: push}
	other := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now,
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: kind}})
	var id string
	var paused atomic.Bool
	hk := &hooked{Kind: kind, rollbacks: map[string]int{}, onRollback: func() {
		if paused.CompareAndSwap(false, true) {
			if _, err := other.Pause(ctx, id, "admin:other"); err != nil {
				t.Errorf("pause through the other process: %v", err)
			}
		}
	}}
	svc := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now,
		Kinds: map[string]campaign.Kind{campaign.KindDataKey: hk}})
	c, err := svc.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	id = c.ID
	svc.Step(ctx)
	got, err := svc.Rollback(ctx, id, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.CampaignRolledBack || !strings.HasPrefix(got.Reason, "rolled back by the operator: 3 ") {
		t.Errorf("after the rollback: %s (%q), want rolled back with 3 devices", got.State, got.Reason)
	}
	for _, d := range got.Devices {
		if d.Status != store.DeviceCancelled || hk.rollbacks[d.ID] != 1 {
			t.Errorf("%s: %s, asked %d times; want cancelled, asked once", d.ID, d.Status, hk.rollbacks[d.ID])
		}
	}
	if !paused.Load() {
		t.Error("the other process's write never happened")
	}
}

// TestRunTimesFromTakeover: a Service that runs campaigns again (its
// process took the leader lease back) times devices in progress from the
// new term, as a restarted fleetd would, not from when it was made.
func TestRunTimesFromTakeover(t *testing.T) {
	clk := &clock{now: time.Now()}
	st, esc, push := dataKeyFleet(t, clk.Now, "d1")
	ctx := context.Background()
	steps := make(chan struct{}, 16)
	svc := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now, Tick: 10 * time.Millisecond,
		Observer: stepObserver(steps), Kinds: map[string]campaign.Kind{campaign.KindDataKey: campaign.DataKey{Escrow: esc, Engine: push}}})
	c, err := svc.Create(ctx, campaign.Spec{Kind: campaign.KindDataKey, Stages: []float64{1}, MinReached: 1,
		DeviceTimeout: time.Minute}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	svc.Step(ctx)
	<-steps
	status := func() store.CampaignDeviceStatus {
		t.Helper()
		got, err := st.GetCampaign(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Devices[0].Status
	}
	if s := status(); s != store.DeviceInProgress {
		t.Fatalf("d1 is %s, want in progress", s)
	}

	clk.Add(5 * time.Minute) // another process led for five device timeouts, then died
	term, end := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); svc.Run(term) }()
	<-steps
	<-steps // the term's first step is over
	end()
	<-done
	if s := status(); s != store.DeviceInProgress {
		t.Fatalf("right after the takeover d1 is %s, want still in progress", s)
	}
	clk.Add(61 * time.Second)
	svc.Step(ctx)
	if s := status(); s != store.DeviceFailed {
		t.Fatalf("61 s after the takeover d1 is %s, want failed (timed out while connected)", s)
	}
}

// stepObserver signals the start of every step.
type stepObserver chan struct{}

func (o stepObserver) DeviceFinished(string, int, string) {}
func (o stepObserver) SelfPaused(string)                  {}
func (o stepObserver) Campaigns([]*store.Campaign) {
	select {
	case o <- struct{}{}:
	default:
	}
}
func (o stepObserver) Recovered(string, lifecycle.SlotKind, time.Duration) {}

// TestClusteredRefusesAnchorsAndFirmware: while several fleetd processes
// share the store, anchors and firmware campaigns (whose kinds change
// what each process keeps in its own data directory) are refused with
// store.ErrClustered and nothing is stored; other kinds are created as
// before, and SetClustered(false) lifts the refusal.
func TestClusteredRefusesAnchorsAndFirmware(t *testing.T) {
	clk := &clock{now: time.Now()}
	st, esc, push := dataKeyFleet(t, clk.Now, "d1")
	ctx := context.Background()
	svc := campaign.New(campaign.Options{Store: st, Sessions: connected{}, Now: clk.Now, Clustered: true,
		Kinds: map[string]campaign.Kind{
			campaign.KindDataKey:  campaign.DataKey{Escrow: esc, Engine: push},
			campaign.KindFirmware: campaign.Firmware{Releases: releases{}},
			campaign.KindAnchors:  campaign.Anchors{},
		}})
	spec := func(kind string, release uint32) campaign.Spec {
		return campaign.Spec{Kind: kind, Stages: []float64{1}, DeviceTimeout: time.Minute, Release: release}
	}
	for _, tc := range []struct {
		spec campaign.Spec
		want error
	}{
		{spec(campaign.KindAnchors, 0), store.ErrClustered},
		{spec(campaign.KindFirmware, 4), store.ErrClustered},
		{spec(campaign.KindDataKey, 0), nil},
	} {
		t.Run(tc.spec.Kind, func(t *testing.T) {
			if _, err := svc.Create(ctx, tc.spec, "admin:test"); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if cs, err := svc.List(ctx); err != nil || len(cs) != 1 || cs[0].Kind != campaign.KindDataKey {
		t.Errorf("campaigns stored: %d (%v), want the data-key one only", len(cs), err)
	}
	svc.SetClustered(false)
	if _, err := svc.Create(ctx, spec(campaign.KindFirmware, 4), "admin:test"); err != nil {
		t.Errorf("firmware campaign alone again: %v", err)
	}
}
