package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// Stats is the engine's counters; *rotation.Engine satisfies it.
type Stats interface{ Stats() rotation.StatsSnapshot }

// Exposure signals (M9): each is a sum of counters that already exist,
// named for what it suggests, a credential or key in the wrong hands.
// The map is the one place that says which refusal means what.
var exposureSignals = []struct {
	signal   string
	reasons  []rotation.Reason // the engine's rejection reasons
	denials  []string          // the broker's refusal reasons
	connects func(rotation.StatsSnapshot) uint64
}{
	{signal: "key-reuse", reasons: []rotation.Reason{rotation.ReasonKeyReuse}},
	{signal: "csr-other-identity", reasons: []rotation.Reason{rotation.ReasonCSRIdentity}},
	{signal: "revoked-credential", reasons: []rotation.Reason{rotation.ReasonRevoked},
		connects: func(s rotation.StatsSnapshot) uint64 { return s.RevokedConnects }},
	{signal: "birth-credential", connects: func(s rotation.StatsSnapshot) uint64 { return s.BirthConnects }},
	{signal: "retired-key", reasons: []rotation.Reason{rotation.ReasonKeyNotAccepted}},
	{signal: "unknown-key", reasons: []rotation.Reason{rotation.ReasonUnknownKey}},
	{signal: "bad-signature", reasons: []rotation.Reason{rotation.ReasonBadSignature}},
	{signal: "untrusted-certificate", denials: []string{"auth:untrusted"}},
}

// Orchestration errors (M6): fleetd's own failures, by kind.
var orchestrationErrors = []struct {
	kind    string
	reasons []rotation.Reason
	denials []string
}{
	{kind: "uplink", reasons: []rotation.Reason{rotation.ReasonInternal}},
	{kind: "queue-full", reasons: []rotation.Reason{rotation.ReasonQueueFull}},
	{kind: "credential-check", denials: []string{"auth:unavailable"}},
	{kind: "session-restored", denials: []string{"broker:session-restored"}},
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
}

var (
	uplinksDesc        = desc("uplinks_total", "Authenticated uplinks the engine processed: the base of the old-key ratio (M3).")
	oldUplinksDesc     = desc("old_key_uplinks_total", "Uplinks signed by a superseded key, still in grace (M3).")
	connectsDesc       = desc("connects_total", "Device logins the engine accepted: the base of the old-key connect ratio (M3).")
	oldConnectsDesc    = desc("old_key_connects_total", "Device logins with a superseded credential, still in grace (M3).")
	rejectionsDesc     = desc("uplink_rejections_total", "Uplinks the engine refused, by reason (M4; see docs/protocol.md for the reasons).", "reason")
	denialsDesc        = desc("broker_denials_total", "Connections and publishes the embedded broker refused, by reason (M4).", "reason")
	orchestrationDesc  = desc("orchestration_errors_total", "fleetd's own failures while orchestrating, by kind (M6).", "kind")
	exposureDesc       = desc("exposure_signals_total", "Refusals that suggest a key or credential in the wrong hands, by signal (M9).", "signal")
	issuedDesc         = desc("certificates_issued_total", "Identity certificates issued: rotations and re-enrolments.")
	reenrolledDesc     = desc("reenrolments_total", "Identities issued to birth credentials.")
	retiredDesc        = desc("retired_total", "Superseded versions retired when their grace ended.")
	resentDesc         = desc("resent_total", "Duplicate requests answered again without a state change.")
	deliveriesDesc     = desc("deliveries_total", "Messages pushed to devices, by kind: data-key, anchors, firmware.", "kind")
	brokerClientsDesc  = desc("broker_connected_clients", "Authenticated clients connected to the embedded broker, fleetd included.")
	scrapeDurationDesc = desc("engine_scrape_duration_seconds", "Time taken to read the engine's and the broker's counters.")
)

// engineCollector reads the engine's and the broker's counters at scrape
// time: they are cumulative since start, so they are counters as they are.
type engineCollector struct {
	stats  Stats
	broker *broker.Embedded // nil with an external broker
}

func (c engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{uplinksDesc, oldUplinksDesc, connectsDesc, oldConnectsDesc, rejectionsDesc,
		denialsDesc, orchestrationDesc, exposureDesc, issuedDesc, reenrolledDesc, retiredDesc, resentDesc, deliveriesDesc,
		brokerClientsDesc, scrapeDurationDesc} {
		ch <- d
	}
}

func (c engineCollector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	st := c.stats.Stats()
	var denials map[string]uint64
	if c.broker != nil {
		denials = c.broker.Denials.Snapshot()
		ch <- prometheus.MustNewConstMetric(brokerClientsDesc, prometheus.GaugeValue, float64(c.broker.Connected()))
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(uplinksDesc, st.Uplinks)
	counter(oldUplinksDesc, st.OldKeyUplinks)
	counter(connectsDesc, st.Connects)
	counter(oldConnectsDesc, st.OldKeyConnects)
	counter(issuedDesc, st.Issued)
	counter(reenrolledDesc, st.Reenrolled)
	counter(retiredDesc, st.Retired)
	counter(resentDesc, st.Resent)
	counter(deliveriesDesc, st.DataKeysSent, "data-key")
	counter(deliveriesDesc, st.AnchorsSent, "anchors")
	counter(deliveriesDesc, st.FirmwareSent, "firmware")
	// Every known reason, seen or not, so that rate() has a series from
	// the start; a reason outside the table (none today) still shows.
	for _, ri := range rotation.Reasons {
		counter(rejectionsDesc, st.Rejected[string(ri.Reason)], string(ri.Reason))
	}
	for r, v := range st.Rejected {
		if rotation.Reason(r).Info().Meaning == "" {
			counter(rejectionsDesc, v, r)
		}
	}
	for r, v := range denials {
		counter(denialsDesc, v, r)
	}
	sum := func(reasons []rotation.Reason, dn []string) uint64 {
		var n uint64
		for _, r := range reasons {
			n += st.Rejected[string(r)]
		}
		for _, d := range dn {
			n += denials[d]
		}
		return n
	}
	for _, o := range orchestrationErrors {
		counter(orchestrationDesc, sum(o.reasons, o.denials), o.kind)
	}
	for _, e := range exposureSignals {
		n := sum(e.reasons, e.denials)
		if e.connects != nil {
			n += e.connects(st)
		}
		counter(exposureDesc, n, e.signal)
	}
	ch <- prometheus.MustNewConstMetric(scrapeDurationDesc, prometheus.GaugeValue, time.Since(start).Seconds())
}

// Start registers the counters read at scrape time (the engine's and, with
// the embedded broker, the broker's; b is nil otherwise) and starts the
// periodic work: the audit chain's verification and the fleet scan, both
// at once and then every VerifyEvery and ScanEvery, until ctx ends. The
// function it returns waits for that work to stop: call it after ctx
// ended and before the store closes.
func (m *Metrics) Start(ctx context.Context, stats Stats, b *broker.Embedded) (wait func() error) {
	m.reg.MustRegister(engineCollector{stats: stats, broker: b})
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.every(ctx, m.opts.VerifyEvery, m.verifyAudit) }()
	go func() { defer m.wg.Done(); m.every(ctx, m.opts.ScanEvery, m.scanFleet) }()
	return func() error { m.wg.Wait(); return nil }
}

func (m *Metrics) every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
