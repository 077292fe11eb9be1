package statuspage

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// lister is a fixed list of campaign records, as the campaign service
// returns them (oldest first).
type lister []*store.Campaign

func (l lister) List(context.Context) ([]*store.Campaign, error) { return l, nil }

func devices(statuses ...store.CampaignDeviceStatus) []store.CampaignDevice {
	out := make([]store.CampaignDevice, len(statuses))
	for i, s := range statuses {
		out[i] = store.CampaignDevice{ID: string(rune('a' + i)), Status: s}
	}
	return out
}

// Each stage counts its own devices, the running campaigns come first,
// then the paused, then the ended, the newest first within each.
func TestFromCampaigns(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const (
		ok, bad, away, left, doing, gone = store.DeviceSucceeded, store.DeviceFailed, store.DeviceAway,
			store.DevicePending, store.DeviceInProgress, store.DeviceCancelled
	)
	l := lister{
		{ID: "done", Kind: "identity", State: store.CampaignCompleted, Stages: []float64{1}, CreatedAt: t0,
			Devices: devices(ok, ok)},
		{ID: "old-running", Kind: "identity", State: store.CampaignRunning, Stages: []float64{1}, CreatedAt: t0.Add(time.Hour),
			Devices: devices(doing)},
		{ID: "paused", Kind: "identity", State: store.CampaignPaused, Selector: "site=x", Stages: []float64{0.25, 0.5, 1},
			CreatedAt: t0.Add(2 * time.Hour), Devices: devices(ok, bad, away, doing, left, left, gone, left)},
		{ID: "new-running", Kind: "identity", State: store.CampaignRunning, Stages: []float64{1}, CreatedAt: t0.Add(3 * time.Hour),
			Devices: devices(left)},
	}
	got, err := FromCampaigns(l).Campaigns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, c := range got {
		order = append(order, c.ID)
	}
	if want := []string{"new-running", "old-running", "paused", "done"}; !reflect.DeepEqual(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	want := Campaign{ID: "paused", Kind: "identity", State: "paused", Selector: "site=x", Stages: []Stage{
		{Name: "1 (25%)", Total: 2, Succeeded: 1, Failed: 1},
		{Name: "2 (50%)", Total: 2, Away: 1, Left: 1},
		{Name: "3 (100%)", Total: 4, Left: 3},
	}}
	if !reflect.DeepEqual(got[2], want) {
		t.Errorf("paused campaign\n got %+v\nwant %+v", got[2], want)
	}
	if FromCampaigns(nil) != nil {
		t.Error("no campaign service must leave the section out")
	}
}
