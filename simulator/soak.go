package simulator

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/progress"
)

// Soak holds fleetd's cost over a long run with every device connected and
// some reconnecting all the time: whether memory and goroutines stay flat.
type Soak struct {
	// Warmup is left out of the verdict (the first samples, while the
	// runtime settles after the connection burst).
	WarmupS float64      `json:"warmup_s"`
	Samples []SoakSample `json:"samples"`
	// Over the samples after warm-up: RSS spread around its mean, in
	// percent, and the goroutine range.
	RSSMeanBytes        float64 `json:"rss_mean_bytes"`
	RSSMaxDeviationPct  float64 `json:"rss_max_deviation_pct"`
	GoroutinesMin       int     `json:"goroutines_min"`
	GoroutinesMax       int     `json:"goroutines_max"`
	Reconnects          uint64  `json:"reconnects"`
	ConnectedAtEndRatio float64 `json:"connected_at_end_ratio"`
}

// SoakSample is fleetd's status at one moment.
type SoakSample struct {
	AtS        float64 `json:"at_s"`
	RSSBytes   uint64  `json:"rss_bytes"`
	Goroutines int     `json:"goroutines"`
	Connected  int     `json:"connected"`
}

// soak keeps the fleet connected for d, making churn of the devices
// reconnect each minute (spread over the minute), and samples fleetd's
// status every sample.
func (f *fleet) soak(ctx context.Context, c *client.Client, d time.Duration, churn float64, sample time.Duration) *Soak {
	out := &Soak{WarmupS: (d / 5).Seconds()}
	start := time.Now()
	perSecond := churn * float64(len(f.ids)) / 60
	var owed float64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	nextSample := start
	// Seconds, not devices: no rate.
	bar := progress.New(f.cfg.Progress, int(d/time.Second), "soak (s)", progress.Options{})
	defer bar.Finish()
	for time.Since(start) < d {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
		owed += perSecond
		for ; owed >= 1; owed-- {
			id := f.ids[rand.IntN(len(f.ids))]
			f.agentsMu.Lock()
			r := f.agents[id]
			f.agentsMu.Unlock()
			if r != nil {
				r.agent.Flap()
				out.Reconnects++
			}
		}
		if time.Now().After(nextSample) {
			nextSample = nextSample.Add(sample)
			if st, err := c.Status(ctx); err == nil {
				out.Samples = append(out.Samples, SoakSample{AtS: time.Since(start).Seconds(), RSSBytes: st.RSSBytes,
					Goroutines: st.Goroutines, Connected: st.ConnectedClient - 1})
			}
		}
		bar.Set(int(time.Since(start) / time.Second))
	}
	var sum float64
	var n int
	out.GoroutinesMin = -1
	for _, s := range out.Samples {
		if s.AtS < out.WarmupS {
			continue
		}
		sum += float64(s.RSSBytes)
		n++
		if out.GoroutinesMin < 0 || s.Goroutines < out.GoroutinesMin {
			out.GoroutinesMin = s.Goroutines
		}
		if s.Goroutines > out.GoroutinesMax {
			out.GoroutinesMax = s.Goroutines
		}
	}
	if n > 0 {
		out.RSSMeanBytes = sum / float64(n)
		for _, s := range out.Samples {
			if s.AtS < out.WarmupS {
				continue
			}
			dev := 100 * (float64(s.RSSBytes) - out.RSSMeanBytes) / out.RSSMeanBytes
			if dev < 0 {
				dev = -dev
			}
			if dev > out.RSSMaxDeviationPct {
				out.RSSMaxDeviationPct = dev
			}
		}
	}
	if len(out.Samples) > 0 && len(f.ids) > 0 {
		out.ConnectedAtEndRatio = float64(out.Samples[len(out.Samples)-1].Connected) / float64(len(f.ids))
	}
	return out
}
