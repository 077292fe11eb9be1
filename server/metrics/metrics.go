package metrics

import (
	"context"
	"crypto"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Namespace prefixes every keyfleet metric.
const Namespace = "keyfleet"

// Latency buckets. Rotations and recoveries span a connected device's
// round trip (tens of milliseconds) to a sleeping device's return (hours
// or days); revocations and signatures are fleetd's own work.
var (
	rotationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400}
	revokeBuckets   = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 120}
	signBuckets     = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
)

// Metrics holds fleetd's registry and the metrics fed by events (state
// changes, signatures, revocations). Create it with New, feed it through
// Observe, Keys and Revoker, and Attach the counters read at scrape time.
type Metrics struct {
	reg  *prometheus.Registry
	proc *prometheus.Registry // the process and Go collectors alone: what Process reads
	st   store.Store
	keys custody.Keys
	opts Options

	requested *prometheus.CounterVec   // slot
	rotations *prometheus.CounterVec   // slot, result
	toRotate  *prometheus.HistogramVec // slot
	recovery  *prometheus.HistogramVec // slot
	revokes   *prometheus.CounterVec   // result
	revokeLat prometheus.Histogram
	expected  *prometheus.CounterVec // slot
	sign      prometheus.Histogram
	audit     *auditCollector
	fleet     *fleetCollector
	campaigns *CampaignObserver

	mu     sync.Mutex
	failed map[recoveryKey]time.Time // open failures awaiting the device's next activation

	wg sync.WaitGroup // the periodic work Start began
}

// Options tunes the periodic work; zero values take the defaults.
type Options struct {
	// VerifyEvery is how often the audit chain is verified; default 10
	// minutes. It is also verified when Run starts.
	VerifyEvery time.Duration
	// ScanEvery is how often the devices are counted by state and their
	// certificates' expiry checked; default 5 minutes, and at start.
	ScanEvery time.Duration
	// UnseenAfter is how long a device must have been silent to count
	// among the unseen devices whose certificate nears expiry; default 24
	// hours.
	UnseenAfter time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// recoveryKey names one slot of one device: a map key in memory, never a
// label.
type recoveryKey struct {
	device string
	slot   lifecycle.SlotKind
}

// maxOpenFailures bounds the failures remembered for the recovery time: a
// fleet-wide failure must not grow fleetd's memory without limit.
const maxOpenFailures = 100_000

// New makes the registry with the Go and process collectors and the
// event-fed metrics, and marks where the audit log stands now, so that
// records written and records expected are both counted from here on.
//
// If the audit log cannot be read now, the written counter is left out
// (and logged): a count from an unknown start would mislead.
func New(st store.Store, keys custody.Keys, opts Options) *Metrics {
	if opts.VerifyEvery <= 0 {
		opts.VerifyEvery = 10 * time.Minute
	}
	if opts.ScanEvery <= 0 {
		opts.ScanEvery = 5 * time.Minute
	}
	if opts.UnseenAfter <= 0 {
		opts.UnseenAfter = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := &Metrics{reg: prometheus.NewRegistry(), proc: prometheus.NewRegistry(), st: st, keys: keys, opts: opts,
		failed: map[recoveryKey]time.Time{}}
	goc, procc := collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
	m.proc.MustRegister(goc, procc)
	m.reg.MustRegister(goc, procc)
	f := prometheus.WrapRegistererWithPrefix(Namespace+"_", m.reg)
	m.requested = newCounterVec(f, "rotations_requested_total", "Rotations requested (a version created pending), by slot.", "slot")
	m.rotations = newCounterVec(f, "rotations_total",
		"Rotations that ended, by slot and result: activated, failed, cancelled or revoked before activation.", "slot", "result")
	m.campaigns = newCampaignObserver(f)
	m.toRotate = newHistogramVec(f, "rotation_duration_seconds",
		"Time from a rotation's request to the device's activation (M2).", rotationBuckets, "slot")
	m.recovery = newHistogramVec(f, "recovery_duration_seconds",
		"Time from a failed or cancelled rotation (or, with campaigns, a rollback) to the device's next activated credential (M10).",
		rotationBuckets, "slot")
	m.campaigns.recovery = m.recovery
	m.revokes = newCounterVec(f, "revocations_total", "Revocations asked for, by result: revoked, already (revoked before) or error.", "result")
	m.revokeLat = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "revocation_duration_seconds",
		Help: "Time from a revocation's request to the device's last session dropped by the broker (M5).", Buckets: revokeBuckets})
	m.expected = newCounterVec(f, "audit_records_expected_total",
		"Audit records expected: one per key state change of a device's identity slot reported since start (M7).", "slot")
	m.expected.WithLabelValues(string(auditedSlot))
	m.sign = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hsm_sign_duration_seconds",
		Help: "Time of one signature by a key in custody (the HSM token, or soft keys).", Buckets: signBuckets})
	f.MustRegister(m.revokeLat, m.sign)
	head, err := auditHead(context.Background(), st)
	if err != nil {
		opts.Logger.Error("audit records written will not be counted", "err", err)
	}
	m.audit = &auditCollector{st: st, base: head + 1, last: map[uint32]uint64{}, window: lateWindowOf(st), counting: err == nil}
	m.fleet = &fleetCollector{}
	m.reg.MustRegister(m.audit, m.fleet, hsmOps{keys})
	if sc, ok := st.(statementCounter); ok {
		m.reg.MustRegister(storeStatements{sc})
	}
	// Series from the start for the slot that rotates by request and
	// activation; the others appear when they first report one.
	for _, s := range []lifecycle.SlotKind{lifecycle.SlotIdentity} {
		m.requested.WithLabelValues(string(s))
		m.toRotate.WithLabelValues(string(s))
		m.recovery.WithLabelValues(string(s))
		for _, r := range []string{"activated", "failed", "cancelled", "revoked"} {
			m.rotations.WithLabelValues(string(s), r)
		}
	}
	for _, r := range []string{"revoked", "already", "error"} {
		m.revokes.WithLabelValues(r)
	}
	return m
}

func newCounterVec(r prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.MustRegister(c)
	return c
}

func newHistogramVec(r prometheus.Registerer, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	r.MustRegister(h)
	return h
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the registry every metric is in (tests, a later status page).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe returns fleetd's OnStateChange hook: it counts the change, then
// calls next (nil for none).
func (m *Metrics) Observe(next func(lifecycle.Change)) func(lifecycle.Change) {
	return func(c lifecycle.Change) {
		m.observe(c)
		if next != nil {
			next(c)
		}
	}
}

func (m *Metrics) observe(c lifecycle.Change) {
	if c.Device != "" && c.Slot == auditedSlot && c.Action() != "provisioned" { // registrations are not reported
		m.expected.WithLabelValues(string(c.Slot)).Inc()
	}
	slot := string(c.Slot)
	if c.From == lifecycle.StateUnknown && c.To == lifecycle.StatePending {
		m.requested.WithLabelValues(slot).Inc()
		return
	}
	if !c.From.Open() {
		return
	}
	switch c.To {
	case lifecycle.StateActive:
		m.rotations.WithLabelValues(slot, "activated").Inc()
		if c.Latency > 0 {
			m.toRotate.WithLabelValues(slot).Observe(c.Latency.Seconds())
		}
		if c.Device != "" {
			m.recovered(recoveryKey{c.Device, c.Slot})
		}
	case lifecycle.StateFailed, lifecycle.StateCancelled, lifecycle.StateRevoked:
		m.rotations.WithLabelValues(slot, c.Action()).Inc()
		if c.To != lifecycle.StateRevoked && c.Device != "" {
			m.mu.Lock()
			if len(m.failed) >= maxOpenFailures {
				clear(m.failed)
			}
			if _, ok := m.failed[recoveryKey{c.Device, c.Slot}]; !ok {
				m.failed[recoveryKey{c.Device, c.Slot}] = m.opts.Now()
			}
			m.mu.Unlock()
		}
	}
}

// recovered observes the recovery time of a slot whose rotation failed or
// was cancelled, now that a version of it is active again.
func (m *Metrics) recovered(k recoveryKey) {
	m.mu.Lock()
	at, ok := m.failed[k]
	delete(m.failed, k)
	m.mu.Unlock()
	if ok {
		m.recovery.WithLabelValues(string(k.slot)).Observe(max(m.opts.Now().Sub(at), 0).Seconds())
	}
}

// ObserveRecovery records a recovery measured elsewhere: campaign
// rollback reports the time from a failed stage to the last device back on
// a credential the broker accepts.
func (m *Metrics) ObserveRecovery(slot lifecycle.SlotKind, d time.Duration) {
	m.recovery.WithLabelValues(string(slot)).Observe(d.Seconds())
}

// Keys returns the key custody with every signature timed.
func (m *Metrics) Keys() custody.Keys { return timedKeys{m.keys, m.sign} }

type timedKeys struct {
	custody.Keys
	h prometheus.Observer
}

func (k timedKeys) Signer(label string) (crypto.Signer, error) {
	s, err := k.Keys.Signer(label)
	if err != nil {
		return nil, err
	}
	return timedSigner{s, k.h}, nil
}

func (k timedKeys) GenerateP256(label string) (crypto.Signer, error) {
	s, err := k.Keys.GenerateP256(label)
	if err != nil {
		return nil, err
	}
	return timedSigner{s, k.h}, nil
}

type timedSigner struct {
	crypto.Signer
	h prometheus.Observer
}

func (s timedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	start := time.Now()
	defer func() { s.h.Observe(time.Since(start).Seconds()) }()
	return s.Signer.Sign(r, digest, opts)
}

// Revoker is what the admin API revokes through; *rotation.Engine
// satisfies it.
type Revoker interface {
	Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error)
}

// Revoker returns r with every revocation counted and its latency (the
// time until the broker dropped the device's sessions) observed.
func (m *Metrics) Revoker(r Revoker) Revoker { return timedRevoker{r, m} }

type timedRevoker struct {
	Revoker
	m *Metrics
}

func (t timedRevoker) Revoke(ctx context.Context, device, actor, reason string) (time.Duration, error) {
	took, err := t.Revoker.Revoke(ctx, device, actor, reason)
	switch {
	case errors.Is(err, rotation.ErrAlreadyRevoked):
		t.m.revokes.WithLabelValues("already").Inc()
	case err != nil:
		t.m.revokes.WithLabelValues("error").Inc()
	default:
		t.m.revokes.WithLabelValues("revoked").Inc()
		t.m.revokeLat.Observe(took.Seconds())
	}
	return took, err
}

// Process returns the process's resident memory and goroutines as the
// process and Go collectors report them (0 where the platform has no
// such figure): what fleetctl status shows.
func (m *Metrics) Process() (rssBytes uint64, goroutines int) { return procstat.Read(m.proc) }

// hsmOps exposes the custody's count of private-key operations.
type hsmOps struct{ keys interface{ Ops() uint64 } }

var hsmOpsDesc = prometheus.NewDesc(Namespace+"_hsm_operations_total",
	"Private-key operations in custody: signatures, data-key wraps and unwraps.", nil, nil)

func (h hsmOps) Describe(ch chan<- *prometheus.Desc) { ch <- hsmOpsDesc }
func (h hsmOps) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(hsmOpsDesc, prometheus.CounterValue, float64(h.keys.Ops()))
}
