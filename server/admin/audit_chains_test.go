package admin

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// pg is the PostgreSQL server of this test binary.
var pg *pgtest.Server

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// TestAuditVerifyHeads: verify reports every chain's end and, as head,
// the latest record overall, in bbolt (one chain, dense numbers) and in
// PostgreSQL (16 chains, numbers skipped after every record). The
// expected heads come from the store's own bookkeeping: bbolt's last
// record, PostgreSQL's head rows.
func TestAuditVerifyHeads(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// open returns the store, what to do after each record, and the
		// chain heads the store keeps.
		open func(t *testing.T) (store.Store, func(), func() []adminapi.AuditChainHead)
	}{
		{"bolt", func(t *testing.T) (store.Store, func(), func() []adminapi.AuditChainHead) {
			st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st, func() {}, func() []adminapi.AuditChainHead {
				var h adminapi.AuditChainHead
				if err := st.ForEachAudit(ctx, 1, func(r *store.AuditRecord) error {
					h = adminapi.AuditChainHead{Records: h.Records + 1, Seq: r.Seq, Head: hex.EncodeToString(r.Hash)}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if h.Records == 0 {
					return nil
				}
				return []adminapi.AuditChainHead{h}
			}
		}},
		{"postgres", func(t *testing.T) (store.Store, func(), func() []adminapi.AuditChainHead) {
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
			gap := func() {
				if _, err := db.Exec(ctx, `SELECT nextval('kf_audit_seq') FROM generate_series(1, 3)`); err != nil {
					t.Fatal(err)
				}
			}
			return st, gap, func() []adminapi.AuditChainHead {
				rows, err := db.Query(ctx, `SELECT chain, n, seq, hash FROM kf_audit_heads WHERE n > 0 ORDER BY chain`)
				if err != nil {
					t.Fatal(err)
				}
				heads, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (adminapi.AuditChainHead, error) {
					var h adminapi.AuditChainHead
					var hash []byte
					err := r.Scan(&h.Chain, &h.Records, &h.Seq, &hash)
					h.Head = hex.EncodeToString(hash)
					return h, err
				})
				if err != nil {
					t.Fatal(err)
				}
				return heads
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, gap, heads := tc.open(t)
			h := &handler{p: Parts{Audit: st}, log: slog.New(slog.DiscardHandler)}
			var latest string
			for i := range 40 {
				if i > 0 {
					if err := st.Audit(ctx, store.Event{Action: "operator", Device: fmt.Sprint("dev-", i%7)}); err != nil {
						t.Fatal(err)
					}
					gap()
				}
				if i%13 != 0 && i != 39 {
					continue
				}
				rec := httptest.NewRecorder()
				h.auditVerify(rec, httptest.NewRequest(http.MethodGet, adminapi.PathAuditVerify, nil))
				var v adminapi.AuditVerify
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || rec.Code != http.StatusOK {
					t.Fatalf("after %d records: %d %v %s", i, rec.Code, err, rec.Body)
				}
				want := heads()
				if i > 0 {
					if err := st.ForEachAudit(ctx, 1, func(r *store.AuditRecord) error { latest = hex.EncodeToString(r.Hash); return nil }); err != nil {
						t.Fatal(err)
					}
				}
				if !v.OK || v.Records != uint64(i) || v.Head != latest || fmt.Sprint(v.Chains) != fmt.Sprint(want) {
					t.Errorf("after %d records: got %+v; want ok, %d records, head %q, chains %+v", i, v, i, latest, want)
				}
			}
			if tc.name == "postgres" && len(heads()) < 2 {
				t.Errorf("the records landed on %d chains, want several", len(heads()))
			}
		})
	}
}
