package metrics

import (
	"context"
	"testing"

	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
)

// storeStatementsValue returns keyfleet_store_statements_total and whether
// the series is there at all.
func storeStatementsValue(t *testing.T, m *Metrics) (float64, bool) {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == Namespace+"_store_statements_total" {
			return mf.GetMetric()[0].GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestStoreStatements: on PostgreSQL the statements the store sends are a
// counter that a write moves (BEGIN, the insert, COMMIT at least); on bbolt,
// which sends none, the series is absent instead of a misleading zero.
func TestStoreStatements(t *testing.T) {
	keys, err := hsm.OpenSoftKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, _ := openPG(t)
	m := New(st, keys, Options{})
	before, ok := storeStatementsValue(t, m)
	if !ok {
		t.Fatal("PostgreSQL store: no keyfleet_store_statements_total series")
	}
	if err := st.CreateDevice(context.Background(), &store.Device{ID: "d1"}, change("d1")); err != nil {
		t.Fatal(err)
	}
	// A scrape itself reads the store (the audit collectors), so the
	// series is at most the store's count read after it, never above.
	after, _ := storeStatementsValue(t, m)
	if after-before < 3 || after > float64(st.Stats().Statements) {
		t.Errorf("statements: %v before a write, %v after, store says %d; want at least 3 more, not above the store's count",
			before, after, st.Stats().Statements)
	}

	bm, _ := newMetrics(t, &testClock{})
	if v, ok := storeStatementsValue(t, bm); ok {
		t.Errorf("bbolt store: keyfleet_store_statements_total = %v, want no series", v)
	}
}
