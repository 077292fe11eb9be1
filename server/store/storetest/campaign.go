package storetest

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// campaignCases are run for stores that implement store.CampaignStore.
var campaignCases = []struct {
	name string
	fn   func(t *testing.T, s store.CampaignStore, audit store.Store)
}{
	{"CampaignRoundTripAndIDs", testCampaignRoundTrip},
	{"CampaignUpdateContract", testCampaignUpdate},
}

func sampleCampaign() *store.Campaign {
	return &store.Campaign{Kind: "identity", Selector: "site=a", Stages: []float64{0.1, 0.5, 1},
		MaxFailure: 0.02, MinReached: 3, Rate: 1000, DeviceTimeout: 90 * time.Second, State: store.CampaignRunning,
		Stage: 1, StageStarted: epoch, CreatedAt: epoch, UpdatedAt: epoch.Add(time.Second), Actor: "admin",
		Reason: "created", Devices: []store.CampaignDevice{
			{ID: "d1", Status: store.DeviceSucceeded, Version: 2, Started: epoch, Finished: epoch.Add(time.Minute)},
			{ID: "d2", Status: store.DeviceAway, Version: 3, Started: epoch, Detail: "not connected"},
			{ID: "d3"},
		}}
}

func testCampaignRoundTrip(t *testing.T, s store.CampaignStore, audit store.Store) {
	ctx := context.Background()
	before := auditCount(t, audit)
	var ids []string
	for range 11 {
		c := sampleCampaign()
		if err := s.CreateCampaign(ctx, c, store.Event{Action: "campaign-created", Actor: "admin"}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
	}
	if ids[0] == "" || ids[0] == ids[1] {
		t.Fatalf("campaign ids %v: want distinct, given by the store", ids)
	}
	if got := auditCount(t, audit) - before; got != 11 {
		t.Errorf("%d audit records for 11 created campaigns", got)
	}
	got, err := s.GetCampaign(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	want := sampleCampaign()
	want.ID = ids[0]
	if !reflect.DeepEqual(normalizeCampaign(got), normalizeCampaign(want)) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
	dup := sampleCampaign()
	dup.ID = ids[3]
	if err := s.CreateCampaign(ctx, dup); !errors.Is(err, store.ErrExists) {
		t.Errorf("create with a taken id: %v, want ErrExists", err)
	}
	if _, err := s.GetCampaign(ctx, "nope"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("get unknown: %v, want ErrNotExist", err)
	}
	var order []string
	if err := s.ForEachCampaign(ctx, func(c *store.Campaign) error { order = append(order, c.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(order, ids) {
		t.Errorf("ForEachCampaign order %v, want creation order %v", order, ids)
	}
}

func testCampaignUpdate(t *testing.T, s store.CampaignStore, audit store.Store) {
	ctx := context.Background()
	c := sampleCampaign()
	if err := s.CreateCampaign(ctx, c); err != nil {
		t.Fatal(err)
	}
	before := auditCount(t, audit)
	out, err := s.UpdateCampaign(ctx, c.ID, func(c *store.Campaign) ([]store.Event, error) {
		c.State, c.Devices[2].Status = store.CampaignPaused, store.DeviceFailed
		return []store.Event{{Action: "campaign-paused", Actor: "campaign", Detail: "campaign " + c.ID}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out.State != store.CampaignPaused || out.Devices[2].Status != store.DeviceFailed {
		t.Errorf("update returned %+v", out)
	}
	if got := auditCount(t, audit) - before; got != 1 {
		t.Errorf("%d audit records for one update", got)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateCampaign(ctx, c.ID, func(c *store.Campaign) ([]store.Event, error) {
		c.State = store.CampaignAborted
		return nil, boom
	}); !errors.Is(err, boom) {
		t.Errorf("fn error: %v", err)
	}
	same, err := s.UpdateCampaign(ctx, c.ID, func(c *store.Campaign) ([]store.Event, error) {
		c.State = store.CampaignAborted
		return nil, store.ErrNoChange
	})
	if err != nil || same.State != store.CampaignPaused {
		t.Errorf("ErrNoChange: %v, state %v; want nil and nothing written", err, same.State)
	}
	if _, err := s.UpdateCampaign(ctx, "nope", func(*store.Campaign) ([]store.Event, error) { return nil, nil }); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("update unknown: %v, want ErrNotExist", err)
	}
}

// normalizeCampaign makes times comparable with DeepEqual.
func normalizeCampaign(c *store.Campaign) *store.Campaign {
	n := *c
	n.StageStarted, n.CreatedAt, n.UpdatedAt = n.StageStarted.UTC(), n.CreatedAt.UTC(), n.UpdatedAt.UTC()
	n.Devices = append([]store.CampaignDevice(nil), c.Devices...)
	for i := range n.Devices {
		n.Devices[i].Started, n.Devices[i].Finished = n.Devices[i].Started.UTC(), n.Devices[i].Finished.UTC()
	}
	return &n
}
