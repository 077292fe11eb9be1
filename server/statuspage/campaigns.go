package statuspage

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/store"
)

// CampaignLister is what the campaigns section reads of the campaign
// service.
type CampaignLister interface {
	List(ctx context.Context) ([]*store.Campaign, error)
}

// FromCampaigns shows the campaigns l lists, with each stage's devices by
// status; nil l gives nil, which leaves the section out.
func FromCampaigns(l CampaignLister) Campaigns {
	if l == nil {
		return nil
	}
	return campaignView{l}
}

type campaignView struct{ l CampaignLister }

// stateOrder puts the running campaigns first, then the paused ones,
// then the ended ones.
var stateOrder = map[store.CampaignState]int{store.CampaignRunning: 0, store.CampaignPaused: 1}

// Campaigns implements Campaigns: the running then the paused campaigns first,
// the newest first within a state.
func (v campaignView) Campaigns(ctx context.Context) ([]Campaign, error) {
	cs, err := v.l.List(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(cs, func(a, b *store.Campaign) int {
		oa, ok := stateOrder[a.State]
		if !ok {
			oa = 2
		}
		ob, ok := stateOrder[b.State]
		if !ok {
			ob = 2
		}
		return cmp.Or(cmp.Compare(oa, ob), b.CreatedAt.Compare(a.CreatedAt))
	})
	out := make([]Campaign, 0, len(cs))
	for _, c := range cs {
		out = append(out, Campaign{ID: c.ID, Kind: c.Kind, State: string(c.State), Selector: c.Selector, Stages: stages(c)})
	}
	return out, nil
}

// stages counts each stage's own devices (not cumulative) by status.
func stages(c *store.Campaign) []Stage {
	var out []Stage
	from := 0
	for i, to := range campaign.Targets(c) {
		st := Stage{Name: fmt.Sprintf("%d (%.3g%%)", i+1, 100*c.Stages[i]), Total: to - from}
		for _, d := range c.Devices[from:to] {
			switch d.Status {
			case store.DeviceSucceeded:
				st.Succeeded++
			case store.DeviceFailed:
				st.Failed++
			case store.DeviceAway:
				st.Away++
			case store.DevicePending, store.DeviceInProgress:
				st.Left++
			}
		}
		out = append(out, st)
		from = to
	}
	return out
}
