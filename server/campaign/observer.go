package campaign

import (
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Results a device's part in a campaign ends with, as an Observer hears
// them. Away is not final: an away device that comes back is heard again
// when it succeeds or fails.
const (
	ResultSucceeded = "succeeded"
	ResultFailed    = "failed"
	ResultAway      = "away"
)

// Observer hears what campaigns do, for the metrics (package metrics
// implements it; this package knows no Prometheus). Calls come from the
// runner's step with the campaign's lock held: they must not block.
type Observer interface {
	// DeviceFinished: a device of campaign, in stage (1-based), ended
	// with result (ResultSucceeded, ResultFailed, ResultAway).
	DeviceFinished(campaign string, stage int, result string)
	// SelfPaused: campaign paused itself above its failure threshold.
	SelfPaused(campaign string)
	// Campaigns: every campaign as it stands, every tick (their states,
	// and the ids whose series should exist from the start).
	Campaigns(cs []*store.Campaign)
	// Recovered: every device campaign rolled back that is connected
	// runs a state the broker and engine accept again, took after the
	// rollback was asked for; slot is what the campaign's kind changes
	// (M10).
	Recovered(campaign string, slot lifecycle.SlotKind, took time.Duration)
}

// stageOf returns the 1-based stage that device index i belongs to.
func stageOf(c *store.Campaign, i int) int {
	for s, t := range Targets(c) {
		if i < t {
			return s + 1
		}
	}
	return len(c.Stages)
}

// finished tells the observer, if any, that device i of c ended with
// result.
func (s *Service) finished(c *store.Campaign, i int, result string) {
	if s.opts.Observer != nil {
		s.opts.Observer.DeviceFinished(c.ID, stageOf(c, i), result)
	}
}
