package metrics

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestQuantile: the estimate histogram_quantile would give.
func TestQuantile(t *testing.T) {
	h := func(total uint64, buckets ...float64) *dto.Histogram { // bound, cumulative count, ...
		out := &dto.Histogram{SampleCount: ptr(total)}
		for i := 0; i < len(buckets); i += 2 {
			out.Bucket = append(out.Bucket, &dto.Bucket{UpperBound: ptr(buckets[i]), CumulativeCount: ptr(uint64(buckets[i+1]))})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		q    float64
		h    *dto.Histogram
		want float64
	}{
		{"median in the first bucket", 0.5, h(4, 1, 2, 2, 4, 5, 4), 1},
		{"p99 interpolated", 0.99, h(4, 1, 2, 2, 4, 5, 4), 1.98},
		{"empty buckets skipped", 0.5, h(2, 1, 0, 2, 0, 4, 2), 3},
		{"beyond the last bound", 0.5, h(3, 1, 0, 2, 0), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := quantile(tc.q, tc.h); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
}

// TestSLIs: the figures follow the state changes observed, M1 to M10 in
// order.
func TestSLIs(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m, _ := newMetrics(t, clk)
	id := lifecycle.SlotIdentity
	obs := m.Observe(nil)
	for _, c := range []lifecycle.Change{
		{Device: "d1", Slot: id, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StatePending},
		{Device: "d1", Slot: id, Version: 2, From: lifecycle.StateIssued, To: lifecycle.StateActive, Latency: 3 * time.Second},
		{Device: "d2", Slot: id, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StatePending},
		{Device: "d2", Slot: id, Version: 2, From: lifecycle.StatePending, To: lifecycle.StateFailed},
	} {
		obs(c)
	}
	slis := m.SLIs()
	if len(slis) != 10 {
		t.Fatalf("%d SLIs, want 10", len(slis))
	}
	for i, s := range slis {
		if want := fmt.Sprint("M", i+1); s.ID != want {
			t.Errorf("SLI %d is %s, want %s", i, s.ID, want)
		}
	}
	for _, tc := range []struct {
		id, value, detail string
		bad               bool
	}{
		{"M1", "50.00%", "1 of 2 ended rotations activated; 2 requested", true},
		{"M2", "p50 ", "1 observed", false},
		// Observed but never written to the store: the audit is incomplete.
		{"M7", "0.00%", "0 of 4 identity changes audited; chain not verified yet", true},
		{"M8", "no campaign", "", false},
		{"M10", "none yet", "0 observed", false},
	} {
		var s SLI
		for _, x := range slis {
			if x.ID == tc.id {
				s = x
			}
		}
		if !strings.HasPrefix(s.Value, tc.value) || !strings.Contains(s.Detail, tc.detail) || s.Bad != tc.bad {
			t.Errorf("%s: %q (%q, bad %v); want %q (%q, bad %v)", tc.id, s.Value, s.Detail, s.Bad, tc.value, tc.detail, tc.bad)
		}
	}
}

// TestAuditCompletenessRace: a record is written in its change's own
// transaction and the change is counted just after, so a scrape in
// between reads more records than counted changes. M7 shows that as
// complete (never above 100%), with both numbers in its detail, and is
// not bad.
func TestAuditCompletenessRace(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m, st := newMetrics(t, clk)
	id := lifecycle.SlotIdentity
	ctx := context.Background()
	for _, a := range []string{"requested", "issued", "activated"} {
		if err := st.Audit(ctx, store.Event{Action: a, Device: "d1", Slot: uint8(protocol.SlotIdentity), Version: 2}); err != nil {
			t.Fatal(err)
		}
	}
	// Only the first two changes were counted when the scrape came.
	obs := m.Observe(nil)
	obs(lifecycle.Change{Device: "d1", Slot: id, Version: 2, From: lifecycle.StateUnknown, To: lifecycle.StatePending})
	obs(lifecycle.Change{Device: "d1", Slot: id, Version: 2, From: lifecycle.StatePending, To: lifecycle.StateIssued})
	var m7 SLI
	for _, s := range m.SLIs() {
		if s.ID == "M7" {
			m7 = s
		}
	}
	if m7.Value != "100.00%" || m7.Bad || !strings.Contains(m7.Detail, "3 of 2 identity changes audited") {
		t.Errorf("M7 %q (%q, bad %v); want 100.00%% from 3 records over 2 counted changes, not bad", m7.Value, m7.Detail, m7.Bad)
	}
}
