package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// campaignStates are every state a campaign can be in: the gauge holds
// each from the start, at zero when no campaign is in it, so that a query
// over it has data before the first campaign.
var campaignStates = []store.CampaignState{store.CampaignRunning, store.CampaignPaused, store.CampaignCompleted,
	store.CampaignAborted, store.CampaignRolledBack}

// CampaignObserver implements the campaign runner's Observer
// (campaign.Observer) in Prometheus terms.
// The campaign label is a campaign id: campaigns are few (an operator
// starts each), never a device id.
type CampaignObserver struct {
	devices *prometheus.CounterVec // campaign, stage, result
	paused  *prometheus.CounterVec // campaign
	states  *prometheus.GaugeVec   // state
	// recovery is Metrics' recovery histogram (M10): a rollback's
	// recovery time is observed in the slot its campaign's kind changes.
	recovery *prometheus.HistogramVec // slot
}

func newCampaignObserver(r prometheus.Registerer) *CampaignObserver {
	o := &CampaignObserver{
		devices: newCounterVec(r, "campaign_devices_total",
			"Devices of a campaign that finished, by campaign, stage (1-based) and result: succeeded, failed, or away (not final: an away device is counted again when it ends) (M8).",
			"campaign", "stage", "result"),
		paused: newCounterVec(r, "campaign_self_pauses_total",
			"Times a campaign paused itself, its failure ratio above its threshold.", "campaign"),
		states: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "campaigns",
			Help: "Campaigns by state: running, paused, completed, aborted, rolled-back."}, []string{"state"}),
	}
	r.MustRegister(o.states)
	for _, s := range campaignStates {
		o.states.WithLabelValues(string(s)).Set(0)
	}
	return o
}

// DeviceFinished implements the campaign runner's Observer.
func (o *CampaignObserver) DeviceFinished(id string, stage int, result string) {
	o.devices.WithLabelValues(id, strconv.Itoa(stage), result).Inc()
}

// Recovered implements the campaign runner's Observer: a rolled-back
// campaign's recovery time is one more observation of the recovery time
// (M10), in the slot its kind changes.
func (o *CampaignObserver) Recovered(_ string, slot lifecycle.SlotKind, took time.Duration) {
	if o.recovery != nil {
		o.recovery.WithLabelValues(string(slot)).Observe(took.Seconds())
	}
}

// SelfPaused implements the campaign runner's Observer.
func (o *CampaignObserver) SelfPaused(id string) { o.paused.WithLabelValues(id).Inc() }

// Campaigns implements the campaign runner's Observer: every known
// state is set, to zero when no campaign is in it, and a running or
// paused campaign's series exist at zero from the start, so that the
// first failure or self-pause is an increase Prometheus sees.
func (o *CampaignObserver) Campaigns(cs []*store.Campaign) {
	counts := map[store.CampaignState]int{}
	for _, c := range cs {
		counts[c.State]++
		if c.State != store.CampaignRunning && c.State != store.CampaignPaused {
			continue
		}
		o.paused.WithLabelValues(c.ID)
		for st := range c.Stages {
			for _, r := range []string{campaign.ResultSucceeded, campaign.ResultFailed, campaign.ResultAway} {
				o.devices.WithLabelValues(c.ID, strconv.Itoa(st+1), r)
			}
		}
	}
	for _, s := range campaignStates {
		o.states.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
	for s, n := range counts {
		o.states.WithLabelValues(string(s)).Set(float64(n))
	}
}

// Campaigns is the observer the campaign runner reports to.
func (m *Metrics) Campaigns() *CampaignObserver { return m.campaigns }
