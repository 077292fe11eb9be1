package metrics

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newMetrics(t *testing.T, clk *testClock) (*Metrics, *store.Bolt) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys, err := hsm.OpenSoftKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(st, keys, Options{Now: clk.Now}), st
}

// TestAuditHead: the last sequence number is found by probing, whatever
// the length of the log.
func TestAuditHead(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, 8, 9, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for i := 0; i < n; i++ {
				if err := st.Audit(context.Background(), store.Event{Action: "test"}); err != nil {
					t.Fatal(err)
				}
			}
			got, err := auditHead(context.Background(), st)
			if err != nil || got != uint64(n) {
				t.Errorf("auditHead = %d, %v; want %d", got, err, n)
			}
		})
	}
}

// TestObserve: state changes count as rotations by slot and result, the
// time to rotate and the recovery time after a cancelled rotation are
// observed, and audit records expected count only the identity slot's
// per-device changes.
func TestObserve(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m, _ := newMetrics(t, clk)
	obs := m.Observe(nil)
	id, data := lifecycle.SlotIdentity, lifecycle.SlotData
	changes := []lifecycle.Change{
		{Device: "d1", Slot: id, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StatePending},
		{Device: "d1", Slot: id, Version: 2, From: lifecycle.StatePending, To: lifecycle.StateIssued, Latency: time.Second},
		{Device: "d1", Slot: id, Version: 2, From: lifecycle.StateIssued, To: lifecycle.StateActive, Latency: 3 * time.Second},
		{Device: "d1", Slot: id, Version: 1, From: lifecycle.StateActive, To: lifecycle.StateSuperseded},
		{Device: "d2", Slot: id, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StatePending},
		{Device: "d2", Slot: id, Version: 2, From: lifecycle.StatePending, To: lifecycle.StateCancelled},
		{Device: "d3", Slot: id, Version: 2, From: lifecycle.StateIssued, To: lifecycle.StateRevoked},
		{Device: "d4", Slot: id, Version: 1, From: lifecycle.StateUnknown, To: lifecycle.StateActive}, // provisioned
		{Device: "d1", Slot: data, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StateActive},
		{Slot: lifecycle.SlotAnchors, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StateActive},
	}
	for _, c := range changes {
		obs(c)
	}
	// d2 comes back 90 s later on a new identity.
	clk.Advance(90 * time.Second)
	obs(lifecycle.Change{Device: "d2", Slot: id, Version: 3, From: lifecycle.StateUnknown, To: lifecycle.StatePending})
	obs(lifecycle.Change{Device: "d2", Slot: id, Version: 3, From: lifecycle.StateIssued, To: lifecycle.StateActive, Latency: time.Minute})

	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"requested identity", testutil.ToFloat64(m.requested.WithLabelValues("identity")), 3},
		{"activated identity", testutil.ToFloat64(m.rotations.WithLabelValues("identity", "activated")), 2},
		{"cancelled identity", testutil.ToFloat64(m.rotations.WithLabelValues("identity", "cancelled")), 1},
		{"revoked identity", testutil.ToFloat64(m.rotations.WithLabelValues("identity", "revoked")), 1},
		{"failed identity", testutil.ToFloat64(m.rotations.WithLabelValues("identity", "failed")), 0},
		// The identity changes of devices, the registration of d4 excepted.
		{"audit expected", testutil.ToFloat64(m.expected.WithLabelValues("identity")), 9},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.toRotate); n != 1 {
		t.Errorf("rotation duration series: %d, want 1 (identity)", n)
	}
	h := histogram(t, m, Namespace+"_rotation_duration_seconds", "identity")
	if h.count != 2 || h.sum != 63 {
		t.Errorf("time to rotate: %d samples, sum %v; want 2, 63", h.count, h.sum)
	}
	r := histogram(t, m, Namespace+"_recovery_duration_seconds", "identity")
	if r.count != 1 || r.sum != 90 {
		t.Errorf("recovery: %d samples, sum %v; want 1, 90", r.count, r.sum)
	}
}

type histo struct {
	count uint64
	sum   float64
}

func histogram(t *testing.T, m *Metrics, name, slot string) histo {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mm := range mf.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if lp.GetName() == "slot" && lp.GetValue() == slot {
					return histo{mm.GetHistogram().GetSampleCount(), mm.GetHistogram().GetSampleSum()}
				}
			}
		}
	}
	t.Fatalf("%s{slot=%q} not found", name, slot)
	return histo{}
}

// TestScanFleet: devices by state, and the certificates nearing expiry of
// devices not seen, in cumulative windows; devices seen lately and revoked
// devices do not count.
func TestScanFleet(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m, st := newMetrics(t, clk)
	now := clk.Now()
	ctx := context.Background()
	devices := []struct {
		id       string
		lastSeen time.Duration // before now
		expires  time.Duration // after now
		revoked  bool
	}{
		{"expired-unseen", 48 * time.Hour, -time.Hour, false},
		{"12h-unseen", 48 * time.Hour, 12 * time.Hour, false},
		{"5d-unseen", 72 * time.Hour, 5 * 24 * time.Hour, false},
		{"20d-unseen", 30 * 24 * time.Hour, 20 * 24 * time.Hour, false},
		{"60d-unseen", 30 * 24 * time.Hour, 60 * 24 * time.Hour, false},
		{"5d-seen", time.Hour, 5 * 24 * time.Hour, false},
		{"5d-revoked", 72 * time.Hour, 5 * 24 * time.Hour, true},
	}
	for _, d := range devices {
		dev := &store.Device{ID: d.id, CreatedAt: now.Add(-90 * 24 * time.Hour), LastSeen: now.Add(-d.lastSeen), Revoked: d.revoked,
			Slots: map[protocol.Slot]*store.SlotState{protocol.SlotIdentity: {Desired: 1, Reported: 1,
				Versions: []*store.KeyVersion{{Version: 1, State: lifecycle.StateActive, NotAfter: now.Add(d.expires)}}}}}
		if err := st.CreateDevice(ctx, dev); err != nil {
			t.Fatal(err)
		}
	}
	m.scanFleet(ctx)
	for _, c := range []struct {
		window string
		want   int
	}{{"expired", 1}, {"1d", 2}, {"7d", 3}, {"30d", 4}} {
		if got := gauge(t, m, Namespace+"_unseen_certificates_expiring", "window", c.window); got != float64(c.want) {
			t.Errorf("window %s: %v, want %d", c.window, got, c.want)
		}
	}
	if got := gauge(t, m, Namespace+"_devices", "state", "active"); got != 6 {
		t.Errorf("active devices: %v, want 6", got)
	}
	if got := gauge(t, m, Namespace+"_devices", "state", "revoked"); got != 1 {
		t.Errorf("revoked devices: %v, want 1", got)
	}
}

func gauge(t *testing.T, m *Metrics, name, label, value string) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mm := range mf.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return mm.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("%s{%s=%q} not found", name, label, value)
	return 0
}
