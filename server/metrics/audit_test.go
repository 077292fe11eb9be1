package metrics

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// pg is the PostgreSQL server of this test binary.
var pg *pgtest.Server

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// openPG opens a PostgreSQL store (16 audit chains) on a fresh schema, and
// a plain connection to it for what the store does not do: leave gaps in
// the sequence, hold a transaction open.
func openPG(t *testing.T) (*pgstore.Store, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	dsn := pg.NewSchema(t)
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })
	return st, db
}

// skip takes n sequence numbers that no record will have, as rolled-back
// writes do.
func skip(t *testing.T, db *pgx.Conn, n int) {
	t.Helper()
	if _, err := db.Exec(context.Background(), `SELECT nextval('kf_audit_seq') FROM generate_series(1, $1)`, n); err != nil {
		t.Fatal(err)
	}
}

// written scrapes the audit records written counter.
func written(t *testing.T, m *Metrics) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == Namespace+"_audit_records_written_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no audit_records_written_total series")
	return 0
}

// change is an identity-slot state change record of device dev.
func change(dev string) store.Event {
	return store.Event{Action: "requested", Device: dev, Slot: uint8(protocol.SlotIdentity), Version: 2}
}

// chainOf is the chain pgstore puts a device's records on (FNV-1a of
// the id modulo the number of chains): the late-commit test needs two
// devices on different chains, or the second write would wait for the
// first.
func chainOf(dev string, chains int) uint32 {
	h := fnv.New32a()
	h.Write([]byte(dev))
	return h.Sum32() % uint32(chains)
}

// TestAuditHeadGaps: the probe finds the last record's number on
// PostgreSQL, where the sequence skips numbers between records and after
// the last.
func TestAuditHeadGaps(t *testing.T) {
	st, db := openPG(t)
	ctx := context.Background()
	for i := range 9 {
		if err := st.Audit(ctx, change(fmt.Sprint("d", i))); err != nil {
			t.Fatal(err)
		}
		skip(t, db, i*3)
		var want uint64
		if err := st.ForEachAudit(ctx, 1, func(r *store.AuditRecord) error { want = r.Seq; return nil }); err != nil {
			t.Fatal(err)
		}
		if got, err := auditHead(ctx, st); err != nil || got != want {
			t.Errorf("after record %d: auditHead = %d, %v; want %d", i+1, got, err, want)
		}
	}
}

// TestAuditWritten: the written counter counts each state-change record
// once, from fleetd's start, in either store, though every scrape reads
// a window of records again (and PostgreSQL skips numbers).
func TestAuditWritten(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) (store.Store, func(n int))
	}{
		{"bolt", func(t *testing.T) (store.Store, func(int)) {
			st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			return st, func(int) {}
		}},
		{"postgres", func(t *testing.T) (store.Store, func(int)) {
			st, db := openPG(t)
			return st, func(n int) { skip(t, db, n) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st, gap := tc.open(t)
			if err := st.Audit(ctx, change("before-start")); err != nil {
				t.Fatal(err)
			}
			keys, err := hsm.OpenSoftKeys(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			m := New(st, keys, Options{Now: time.Now})
			add := func(devs ...string) {
				t.Helper()
				for _, d := range devs {
					if err := st.Audit(ctx, change(d), store.Event{Action: "operator", Device: d}); err != nil {
						t.Fatal(err)
					}
					gap(5)
				}
			}
			add("d1", "d2", "d3")
			for _, want := range []float64{3, 3} {
				if got := written(t, m); got != want {
					t.Errorf("written = %v, want %v", got, want)
				}
			}
			add("d4", "d5")
			if got := written(t, m); got != 5 {
				t.Errorf("written = %v, want 5", got)
			}
		})
	}
}

// TestAuditWrittenLate: on PostgreSQL a write that took its sequence
// number first may commit after one that took a higher number, and after
// a scrape counted that one. The next scrape still counts it. The test
// makes the late commit for real: a transaction of its own holds the
// number the store is about to take, so the store's insert waits for it.
func TestAuditWrittenLate(t *testing.T) {
	ctx := context.Background()
	st, db := openPG(t)
	keys, err := hsm.OpenSoftKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Audit(ctx, change("d0")); err != nil {
		t.Fatal(err)
	}
	m := New(st, keys, Options{Now: time.Now})
	late, early := "late", "early"
	for i := 0; chainOf(early, st.Chains()) == chainOf(late, st.Chains()); i++ {
		early = fmt.Sprint("early-", i)
	}

	// The number the next write will take, held by an uncommitted row.
	var v int64
	if err := db.QueryRow(ctx, `SELECT nextval('kf_audit_seq')`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `SELECT setval('kf_audit_seq', $1, false)`, v); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO kf_audit (seq, chain, rec) VALUES ($1, 0, '\x00')`, v); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.Audit(ctx, change(late)) }()
	watch, err := pgx.Connect(ctx, pg.DSN("postgres")+"&search_path="+db.Config().RuntimeParams["search_path"])
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var at int64
		var called bool
		if err := watch.QueryRow(ctx, `SELECT last_value, is_called FROM kf_audit_seq`).Scan(&at, &called); err != nil {
			t.Fatal(err)
		}
		if called && at >= v {
			break // the late write has its number and waits
		}
		if time.Now().After(deadline) {
			t.Fatal("the late write took no sequence number within 10 s")
		}
	}
	if err := st.Audit(ctx, change(early)); err != nil {
		t.Fatal(err)
	}
	if got := written(t, m); got != 1 {
		t.Fatalf("written = %v before the late commit, want 1 (the early record)", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("late write: %v", err)
	}
	var seqs []uint64
	if err := st.ForEachAudit(ctx, uint64(v), func(r *store.AuditRecord) error { seqs = append(seqs, r.Seq); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqs) != fmt.Sprint([]int64{v, v + 1}) {
		t.Fatalf("records from %d: %v, want the late one at %d and the early one after", v, seqs, v)
	}
	if got := written(t, m); got != 2 {
		t.Errorf("written = %v after the late commit, want 2", got)
	}
}
