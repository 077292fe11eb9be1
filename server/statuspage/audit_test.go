package statuspage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// pg is the PostgreSQL server of this test binary.
var pg *pgtest.Server

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// TestLastAudit: the last n records, newest first, whatever the length
// of the log, in bbolt (numbered densely) and in PostgreSQL, whose 16
// chains share one sequence that here skips 1 to 4 numbers after each
// record, as rolled-back writes make it.
func TestLastAudit(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) (store.Store, func(i int))
	}{
		{"bolt", func(t *testing.T) (store.Store, func(int)) {
			st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st, func(int) {}
		}},
		{"postgres", func(t *testing.T) (store.Store, func(int)) {
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
			return st, func(i int) {
				if _, err := db.Exec(ctx, `SELECT nextval('kf_audit_seq') FROM generate_series(1, $1)`, i%4+1); err != nil {
					t.Fatal(err)
				}
			}
		}},
	}
	for _, s := range stores {
		for _, tc := range []struct{ records, n, want int }{{0, 20, 0}, {1, 20, 1}, {20, 20, 20}, {21, 20, 20}, {100, 20, 20}, {5, 3, 3}} {
			t.Run(fmt.Sprintf("%s/%d of %d", s.name, tc.n, tc.records), func(t *testing.T) {
				ctx := context.Background()
				st, gap := s.open(t)
				var seqs []uint64 // of record 1, 2, ...
				for i := 1; i <= tc.records; i++ {
					if err := st.Audit(ctx, store.Event{Action: fmt.Sprint("a", i), Device: fmt.Sprint("d", i)}); err != nil {
						t.Fatal(err)
					}
					gap(i)
				}
				if err := st.ForEachAudit(ctx, 1, func(r *store.AuditRecord) error { seqs = append(seqs, r.Seq); return nil }); err != nil {
					t.Fatal(err)
				}
				got, err := lastAudit(ctx, st, tc.n)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != tc.want {
					t.Fatalf("got %d records, want %d", len(got), tc.want)
				}
				for i, r := range got {
					if want := tc.records - i; r.Seq != seqs[want-1] || r.Action != fmt.Sprint("a", want) {
						t.Errorf("record %d: seq %d %s, want %d a%d", i, r.Seq, r.Action, seqs[want-1], want)
					}
				}
			})
		}
	}
}
