package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/store"
)

// The campaign observer: states counted every tick (zero for the states
// no campaign is in), a live campaign's series present at zero before its
// first event, and the events counted by campaign, stage and result.
func TestCampaignObserver(t *testing.T) {
	m, _ := newMetrics(t, &testClock{now: time.Now()})
	o := m.Campaigns()
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(`
# HELP keyfleet_campaigns Campaigns by state: running, paused, completed, aborted, rolled-back.
# TYPE keyfleet_campaigns gauge
keyfleet_campaigns{state="aborted"} 0
keyfleet_campaigns{state="completed"} 0
keyfleet_campaigns{state="paused"} 0
keyfleet_campaigns{state="rolled-back"} 0
keyfleet_campaigns{state="running"} 0
`), "keyfleet_campaigns"); err != nil {
		t.Error(err)
	}
	two := []float64{0.1, 1}
	o.Campaigns([]*store.Campaign{
		{ID: "c1", State: store.CampaignRunning, Stages: two},
		{ID: "c2", State: store.CampaignCompleted, Stages: two},
		{ID: "c3", State: store.CampaignRunning, Stages: []float64{1}},
	})
	o.DeviceFinished("c1", 1, campaign.ResultFailed)
	o.DeviceFinished("c1", 1, campaign.ResultSucceeded)
	o.DeviceFinished("c1", 1, campaign.ResultSucceeded)
	o.DeviceFinished("c1", 2, campaign.ResultAway)
	o.SelfPaused("c1")
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"running", testutil.ToFloat64(o.states.WithLabelValues("running")), 2},
		{"completed", testutil.ToFloat64(o.states.WithLabelValues("completed")), 1},
		{"paused", testutil.ToFloat64(o.states.WithLabelValues("paused")), 0},
		{"c1 stage 1 failed", testutil.ToFloat64(o.devices.WithLabelValues("c1", "1", "failed")), 1},
		{"c1 stage 1 succeeded", testutil.ToFloat64(o.devices.WithLabelValues("c1", "1", "succeeded")), 2},
		{"c1 stage 2 away", testutil.ToFloat64(o.devices.WithLabelValues("c1", "2", "away")), 1},
		{"c1 self-pauses", testutil.ToFloat64(o.paused.WithLabelValues("c1")), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	// c3's series exist at zero (3 results, 1 stage, and its pauses); c2
	// ended before it was seen and gets none.
	if n := testutil.CollectAndCount(o.devices); n != 6+3 {
		t.Errorf("%d device series, want 9 (c1: 2 stages x 3 results, c3: 1 x 3)", n)
	}
	if n := testutil.CollectAndCount(o.paused); n != 2 {
		t.Errorf("%d self-pause series, want 2 (c1, c3)", n)
	}
	// M8 on the status page: stage 1's failed over reached, bad after a
	// self-pause.
	for _, x := range m.SLIs() {
		if x.ID != "M8" {
			continue
		}
		if want := "1 of 3 first-stage devices reached failed; 1 self-pauses: c1 1"; x.Value != "33.33%" || x.Detail != want || !x.Bad {
			t.Errorf("M8: %q (%q, bad %v); want 33.33%% (%q, bad)", x.Value, x.Detail, x.Bad, want)
		}
	}
}
