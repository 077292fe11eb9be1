package simulator

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Histograms fleetsim reads from fleetd's /metrics: what fleetd itself
// measured, not what the simulator saw, so that the report's M5 and M10
// are the figures an operator's Prometheus would show.
const (
	metricRevocation = "keyfleet_revocation_duration_seconds" // M5
	metricRecovery   = "keyfleet_recovery_duration_seconds"   // M10, slot="identity"
)

// histogram is a Prometheus histogram summed over fleetd's lifetimes: a
// killed fleetd starts its counts from zero, so each lifetime's last
// scrape is banked before the kill.
type histogram struct {
	Count   uint64
	Sum     float64
	Buckets map[float64]uint64 // upper bound -> cumulative count
}

func (h *histogram) add(o histogram) {
	if h.Buckets == nil {
		h.Buckets = map[float64]uint64{}
	}
	h.Count += o.Count
	h.Sum += o.Sum
	for le, n := range o.Buckets {
		h.Buckets[le] += n
	}
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile
// does: linear within the bucket it falls in; NaN without samples.
func (h histogram) quantile(q float64) float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	les := make([]float64, 0, len(h.Buckets))
	for le := range h.Buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	rank := q * float64(h.Count)
	lower, below := 0.0, uint64(0)
	for _, le := range les {
		n := h.Buckets[le]
		if float64(n) >= rank {
			if math.IsInf(le, 1) {
				return lower // above the last finite bound: its bound, as Prometheus
			}
			if n == below {
				return le
			}
			return lower + (le-lower)*(rank-float64(below))/float64(n-below)
		}
		lower, below = le, n
	}
	return lower
}

// scrapeHistograms reads the named histograms from the /metrics of the ops
// listener at addr; labels filter the series (nil: all, summed).
func scrapeHistograms(ctx context.Context, addr string, want map[string]map[string]string) (map[string]histogram, error) {
	mfs, err := scrape(ctx, addr)
	if err != nil {
		return nil, err
	}
	out := map[string]histogram{}
	for name, labels := range want {
		mf := mfs[name]
		h := histogram{Buckets: map[float64]uint64{}}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == k && l.GetValue() == v
				}
				if !found {
					continue series
				}
			}
			hi := m.GetHistogram()
			h.Count += hi.GetSampleCount()
			h.Sum += hi.GetSampleSum()
			inf := false
			for _, b := range hi.GetBucket() {
				h.Buckets[b.GetUpperBound()] += b.GetCumulativeCount()
				inf = inf || math.IsInf(b.GetUpperBound(), 1)
			}
			if !inf { // the text format's +Inf bucket is the sample count
				h.Buckets[math.Inf(1)] += hi.GetSampleCount()
			}
		}
		out[name] = h
	}
	return out, nil
}

// scrapeCounter reads the unlabelled counter name from fleetd's /metrics
// at addr; a missing series is an error (with bbolt, the store's
// statement count is absent).
func scrapeCounter(ctx context.Context, addr, name string) (float64, error) {
	mfs, err := scrape(ctx, addr)
	if err != nil {
		return 0, err
	}
	mf := mfs[name]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return 0, fmt.Errorf("simulator: fleetd at %s exposes no %s", addr, name)
	}
	return mf.GetMetric()[0].GetCounter().GetValue(), nil
}

// scrape reads fleetd's /metrics at addr.
func scrape(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("simulator: scrape fleetd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("simulator: scrape fleetd: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("simulator: scrape fleetd: %w", err)
	}
	return mfs, nil
}

// metricsBank keeps the histograms of fleetd's earlier lifetimes.
type metricsBank struct {
	addr   string
	banked map[string]*histogram
}

var wantedHistograms = map[string]map[string]string{metricRevocation: nil, metricRecovery: {"slot": "identity"}}

// bank adds the current lifetime's histograms, before a kill.
func (b *metricsBank) bank(ctx context.Context) error {
	hs, err := scrapeHistograms(ctx, b.addr, wantedHistograms)
	if err != nil {
		return err
	}
	for name, h := range hs {
		if b.banked[name] == nil {
			b.banked[name] = &histogram{}
		}
		b.banked[name].add(h)
	}
	return nil
}

// total returns every lifetime's histograms, the current one included.
func (b *metricsBank) total(ctx context.Context) (map[string]histogram, error) {
	hs, err := scrapeHistograms(ctx, b.addr, wantedHistograms)
	if err != nil {
		return nil, err
	}
	out := map[string]histogram{}
	for name, h := range hs {
		var t histogram
		t.add(h)
		if p := b.banked[name]; p != nil {
			t.add(*p)
		}
		out[name] = t
	}
	return out, nil
}
