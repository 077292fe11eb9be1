package pgstore

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keyfleet/keyfleet/server/store"
)

// TestVerifyAuditDetectsTampering: records on several chains verify; any
// change made to the tables behind fleetd's back is reported as
// ErrAuditBroken: a record altered, the newest record of a chain dropped,
// one from the middle dropped, one moved to another chain, the head reset.
func TestVerifyAuditDetectsTampering(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tamper string // SQL; $1 is a chain with at least three records
	}{
		{"record altered", `UPDATE kf_audit SET rec = overlay(rec placing '\xff'::bytea from 20 for 1)
			WHERE seq = (SELECT MIN(seq) FROM kf_audit WHERE chain = $1)`},
		{"newest of a chain dropped", `DELETE FROM kf_audit WHERE seq = (SELECT MAX(seq) FROM kf_audit WHERE chain = $1)`},
		{"record from the middle dropped", `DELETE FROM kf_audit WHERE seq = (SELECT seq FROM kf_audit WHERE chain = $1 ORDER BY seq OFFSET 1 LIMIT 1)`},
		{"record moved to another chain", `UPDATE kf_audit SET chain = chain + 1000 WHERE seq = (SELECT MIN(seq) FROM kf_audit WHERE chain = $1)`},
		{"head reset", `UPDATE kf_audit_heads SET seq = 0, hash = NULL, n = 0 WHERE chain = $1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := open(t, Options{Chains: 4})
			for i := range 12 {
				if err := s.Audit(ctx, store.Event{Action: "note", Device: fmt.Sprintf("d%d", i%5), Detail: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
			if n, err := s.VerifyAudit(ctx); err != nil || n != 12 {
				t.Fatalf("VerifyAudit before tampering: %d, %v; want 12, nil", n, err)
			}
			var chain int32
			if err := s.pool.QueryRow(ctx, `SELECT chain FROM kf_audit GROUP BY chain HAVING COUNT(*) >= 3 ORDER BY chain LIMIT 1`).Scan(&chain); err != nil {
				t.Fatalf("no chain with three records: %v", err)
			}
			tag, err := s.pool.Exec(ctx, tc.tamper, chain)
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("tamper: %v, %d rows", err, tag.RowsAffected())
			}
			_, err = s.VerifyAudit(ctx)
			if !errors.Is(err, store.ErrAuditBroken) {
				t.Errorf("VerifyAudit after %s: got %v, want ErrAuditBroken", tc.name, err)
			}
			t.Log(err)
		})
	}
}
