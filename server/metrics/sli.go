package metrics

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/keyfleet/keyfleet/server/lifecycle"
)

// SLI is one service-level indicator of docs/observability.md as a
// figure now, counted since fleetd's start: what a person reads on the
// status page, where a Prometheus server would compute a rate over a
// window. The figures come from the registry /metrics serves, gathered in
// the process, so the page and a scrape never disagree.
type SLI struct {
	ID     string // "M1" to "M10"
	Name   string
	Value  string // the figure, or a word such as "none yet"
	Detail string // what it counts, or the parts it sums
	// Bad marks a figure an operator should look at now: an exposure
	// signal, a fleetd failure, a broken or incomplete audit.
	Bad bool
}

// authRejections are the uplink rejections M4 counts: a device signing
// with a key the server no longer (or never) accepted.
var authRejections = map[string]bool{"key-not-accepted": true, "unknown-key": true, "bad-signature": true,
	"not-current-key": true}

// SLIs gathers the registry and returns M1 to M10 in order. A gathering
// error leaves the figures it could not read at zero: the page shows what
// there is rather than nothing.
func (m *Metrics) SLIs() []SLI {
	mfs, _ := m.reg.Gather()
	f := gathered{}
	for _, mf := range mfs {
		f[mf.GetName()] = mf
	}
	id := string(lifecycle.SlotIdentity)
	slot := func(l map[string]string) bool { return l["slot"] == id }
	var out []SLI

	ended := f.sum("rotations_total", slot)
	activated := f.sum("rotations_total", func(l map[string]string) bool { return slot(l) && l["result"] == "activated" })
	m1 := SLI{ID: "M1", Name: "rotation success rate", Value: "no rotation ended yet",
		Detail: fmt.Sprintf("%d of %d ended rotations activated; %d requested", int64(activated), int64(ended),
			int64(f.sum("rotations_requested_total", slot)))}
	if ended > 0 {
		m1.Value, m1.Bad = percent(activated/ended), activated < ended
	}
	out = append(out, m1)

	out = append(out, quantiles("M2", "time to rotate", f.histogram("rotation_duration_seconds", slot), "request to activation"))

	uplinks, oldUplinks := f.sum("uplinks_total", nil), f.sum("old_key_uplinks_total", nil)
	connects, oldConnects := f.sum("connects_total", nil), f.sum("old_key_connects_total", nil)
	m3 := SLI{ID: "M3", Name: "old-key usage ratio", Value: "no uplink yet",
		Detail: fmt.Sprintf("%d of %d uplinks and %d of %d logins with a superseded key in grace",
			int64(oldUplinks), int64(uplinks), int64(oldConnects), int64(connects))}
	if uplinks > 0 {
		m3.Value = percent(oldUplinks / uplinks)
	}
	out = append(out, m3)

	denied := f.sum("broker_denials_total", func(l map[string]string) bool { return strings.HasPrefix(l["reason"], "auth:") })
	rejected := f.sum("uplink_rejections_total", func(l map[string]string) bool { return authRejections[l["reason"]] })
	out = append(out, SLI{ID: "M4", Name: "authentication failures", Value: fmt.Sprint(int64(denied + rejected)),
		Detail: fmt.Sprintf("%d broker logins refused, %d uplinks with a key not accepted", int64(denied), int64(rejected))})

	out = append(out, quantiles("M5", "revocation latency", f.histogram("revocation_duration_seconds", nil),
		"request to the last session dropped"))

	errs := f.sum("orchestration_errors_total", nil)
	handled := uplinks + f.sum("uplink_rejections_total", nil)
	m6 := SLI{ID: "M6", Name: "orchestration error rate", Value: "no uplink yet", Bad: errs > 0,
		Detail: fmt.Sprintf("%d fleetd failures over %d uplinks handled%s", int64(errs), int64(handled),
			f.nonzero("orchestration_errors_total", "kind"))}
	if handled > 0 {
		m6.Value = percent(errs / handled)
	}
	out = append(out, m6)

	expected, written := f.sum("audit_records_expected_total", nil), f.sum("audit_records_written_total", nil)
	m7 := SLI{ID: "M7", Name: "audit completeness", Value: "no change yet",
		Detail: fmt.Sprintf("%d of %d identity changes audited; chain %s", int64(written), int64(expected), f.chain())}
	if expected > 0 {
		// A record is written in the change's own transaction and the
		// change counted just after, so under load a read can see a few
		// records whose change is not counted yet: more than 100% is that
		// race, not extra records, and the detail keeps both numbers.
		m7.Value = percent(min(written, expected) / expected)
	}
	m7.Bad = written < expected || f.sum("audit_chain_verified", nil) == 0 && f["keyfleet_audit_chain_verified"] != nil
	out = append(out, m7)

	stage1 := func(result string) func(map[string]string) bool {
		return func(l map[string]string) bool { return l["stage"] == "1" && (result == "" || l["result"] == result) }
	}
	canaryFailed := f.sum("campaign_devices_total", stage1("failed"))
	canaryReached := canaryFailed + f.sum("campaign_devices_total", stage1("succeeded"))
	pauses := f.sum("campaign_self_pauses_total", nil)
	m8 := SLI{ID: "M8", Name: "canary failure rate", Value: "no campaign", Bad: pauses > 0,
		Detail: "measured by campaigns' first stage"}
	if len(f[Namespace+"_campaign_devices_total"].GetMetric()) > 0 {
		m8.Value = "no device reached yet"
		m8.Detail = fmt.Sprintf("%d of %d first-stage devices reached failed; %d self-pauses%s", int64(canaryFailed),
			int64(canaryReached), int64(pauses), f.nonzero("campaign_self_pauses_total", "campaign"))
	}
	if canaryReached > 0 {
		m8.Value = percent(canaryFailed / canaryReached)
	}
	out = append(out, m8)

	exposure := f.sum("exposure_signals_total", nil)
	out = append(out, SLI{ID: "M9", Name: "exposure signals", Value: fmt.Sprint(int64(exposure)), Bad: exposure > 0,
		Detail: "refusals suggesting a key in the wrong hands" + f.nonzero("exposure_signals_total", "signal")})

	out = append(out, quantiles("M10", "recovery time", f.histogram("recovery_duration_seconds", slot),
		"failed rotation to the next activation"))
	return out
}

// gathered indexes a gathering by metric name.
type gathered map[string]*dto.MetricFamily

func labels(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// sum adds the counters or gauges of keyfleet_name whose labels match
// (nil: all).
func (f gathered) sum(name string, match func(map[string]string) bool) float64 {
	var n float64
	for _, m := range f[Namespace+"_"+name].GetMetric() {
		if match != nil && !match(labels(m)) {
			continue
		}
		n += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return n
}

// nonzero lists the series of keyfleet_name above zero by the value of
// label, as ": a 2, b 1" (or "" when none is).
func (f gathered) nonzero(name, label string) string {
	var parts []string
	for _, m := range f[Namespace+"_"+name].GetMetric() {
		if v := m.GetCounter().GetValue(); v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", labels(m)[label], int64(v)))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	sort.Strings(parts)
	return ": " + strings.Join(parts, ", ")
}

// chain says how the audit chain's last verification went.
func (f gathered) chain() string {
	if f[Namespace+"_audit_chain_verified"] == nil {
		return "not verified yet"
	}
	if f.sum("audit_chain_verified", nil) == 0 {
		return "BROKEN or unreadable at the last verification"
	}
	at := time.Unix(int64(f.sum("audit_chain_verified_timestamp_seconds", nil)), 0).UTC()
	return fmt.Sprintf("verified at %s (%d records then)", at.Format("15:04:05 UTC"), int64(f.sum("audit_chain_records", nil)))
}

// histogram merges the histograms of keyfleet_name whose labels match.
func (f gathered) histogram(name string, match func(map[string]string) bool) *dto.Histogram {
	var out *dto.Histogram
	for _, m := range f[Namespace+"_"+name].GetMetric() {
		h := m.GetHistogram()
		if h == nil || match != nil && !match(labels(m)) {
			continue
		}
		if out == nil {
			out = h
			continue
		}
		merged := &dto.Histogram{SampleCount: ptr(out.GetSampleCount() + h.GetSampleCount())}
		for i, b := range out.GetBucket() {
			merged.Bucket = append(merged.Bucket, &dto.Bucket{UpperBound: b.UpperBound,
				CumulativeCount: ptr(b.GetCumulativeCount() + h.GetBucket()[i].GetCumulativeCount())})
		}
		out = merged
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// quantiles is the SLI of a latency histogram: its median and 99th
// percentile.
func quantiles(id, name string, h *dto.Histogram, what string) SLI {
	n := h.GetSampleCount()
	s := SLI{ID: id, Name: name, Value: "none yet", Detail: fmt.Sprintf("%s; %d observed", what, n)}
	if n > 0 {
		s.Value = fmt.Sprintf("p50 %s, p99 %s", seconds(quantile(0.5, h)), seconds(quantile(0.99, h)))
	}
	return s
}

// quantile estimates the q-quantile of h as Prometheus'
// histogram_quantile does: linear within the bucket it falls in, the
// highest finite bound when it falls beyond.
func quantile(q float64, h *dto.Histogram) float64 {
	rank := q * float64(h.GetSampleCount())
	lower, below := 0.0, uint64(0)
	for _, b := range h.GetBucket() {
		c := b.GetCumulativeCount()
		if float64(c) >= rank && c > below {
			return lower + (b.GetUpperBound()-lower)*(rank-float64(below))/float64(c-below)
		}
		lower, below = b.GetUpperBound(), c
	}
	return lower
}

func percent(r float64) string {
	return fmt.Sprintf("%.2f%%", math.Round(r*10000)/100)
}

// seconds formats a latency for people: milliseconds to hours.
func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2f ms", s*1000)
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}
