package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// audit export, verify and list against fleetd on PostgreSQL: the log is
// several hash chains numbered from one sequence with gaps (numbers taken
// and never used, as a rolled-back write leaves them). The export verifies
// chain by chain with the outside verifier, its heads are the ones audit
// verify reports, list pages across the gaps, and a record changed in
// the database breaks both.
func TestAuditChainsPostgres(t *testing.T) {
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	dsn := pg.NewSchema(t)
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Store = st })
	run := against(f)
	mustRun := func(args ...string) (string, string) {
		t.Helper()
		out, errOut, status := run(args...)
		if status != 0 {
			t.Fatalf("fleetctl %v: status %d\n%s%s", args, status, out, errOut)
		}
		return out, errOut
	}
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	for _, id := range []string{"dev-1", "dev-2", "dev-3", "dev-4"} {
		mustRun("device", "add", id, "--out", filepath.Join(t.TempDir(), id))
		if _, err := db.Exec(ctx, `SELECT nextval('kf_audit_seq') FROM generate_series(1, 3)`); err != nil {
			t.Fatal(err)
		}
	}
	mustRun("rotate", "dev-1", "dev-2", "dev-3")

	var all []adminapi.AuditRecord
	out, _ := mustRun("audit", "list", "--limit", "0", "-o", "json")
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("audit list -o json: %v\n%s", err, out)
	}
	if len(all) < 7 || all[len(all)-1].Seq == uint64(len(all)) {
		t.Fatalf("audit list: %d records up to %d; want the provisioning and rotation records, with gaps", len(all), all[len(all)-1].Seq)
	}

	export := filepath.Join(t.TempDir(), "audit.jsonl")
	_, errOut := mustRun("audit", "export", "--out", export)
	heads, err := checkExport(export)
	if err != nil {
		t.Fatalf("outside verifier: %v", err)
	}
	if len(heads) < 2 {
		t.Fatalf("export has %d chains, want several (devices spread over 16)", len(heads))
	}
	latest := all[len(all)-1].Hash
	if want := fmt.Sprintf("exported %d records; head %s; %d chains", len(all), latest, len(heads)); !strings.Contains(errOut, want) {
		t.Errorf("export summary %q, want %q", errOut, want)
	}

	out, _ = mustRun("audit", "verify", "-o", "json")
	var v adminapi.AuditVerify
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("audit verify -o json: %v\n%s", err, out)
	}
	if !v.OK || v.Records != uint64(len(all)) || v.Head != latest || len(v.Chains) != len(heads) {
		t.Fatalf("audit verify: %+v; want ok, %d records, head %s and %d chains", v, len(all), latest, len(heads))
	}
	var sum uint64
	for _, c := range v.Chains {
		if heads[c.Chain] != c.Head {
			t.Errorf("chain %d: verify says head %s, the export ends at %s", c.Chain, c.Head, heads[c.Chain])
		}
		sum += c.Records
	}
	if sum != v.Records {
		t.Errorf("chains hold %d records, verify counted %d", sum, v.Records)
	}
	out, _ = mustRun("audit", "verify")
	if !strings.Contains(out, fmt.Sprintf("audit chain verified: %d records, head %s", len(all), latest)) || !strings.Contains(out, "CHAIN") {
		t.Errorf("audit verify: got %q, want %d records, head %s and a line per chain", out, len(all), latest)
	}

	t.Run("list pages across gaps", func(t *testing.T) {
		_, errOut := mustRun("audit", "list", "--limit", "3")
		if want := fmt.Sprintf("continue with --after %d", all[2].Seq); !strings.Contains(errOut, want) {
			t.Fatalf("audit list --limit 3: stderr %q, want %q", errOut, want)
		}
		out, _ := mustRun("audit", "list", "--after", fmt.Sprint(all[2].Seq), "--limit", "2", "-o", "json")
		var got []adminapi.AuditRecord
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Seq != all[3].Seq || got[1].Seq != all[4].Seq {
			t.Errorf("--after %d --limit 2: got %+v, want records %d and %d", all[2].Seq, got, all[3].Seq, all[4].Seq)
		}
	})

	// Change one record's device in the database.
	tag, err := db.Exec(ctx, `UPDATE kf_audit SET rec = overlay(rec PLACING 'X'::bytea FROM position('dev-2'::bytea IN rec) + 4 FOR 1)
		WHERE seq = (SELECT min(seq) FROM kf_audit WHERE position('dev-2'::bytea IN rec) > 0)`)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("tamper: %v, %d rows", err, tag.RowsAffected())
	}
	out, errOut, status := run("audit", "verify")
	if status != 1 || !strings.Contains(out, "AUDIT CHAIN BROKEN") || !strings.Contains(errOut, "audit chain does not verify") {
		t.Errorf("verify after tampering: got status %d, %q, %q; want 1 and the chain broken", status, out, errOut)
	}
	tampered := filepath.Join(t.TempDir(), "tampered.jsonl")
	mustRun("audit", "export", "--out", tampered)
	if _, err := checkExport(tampered); err == nil || !strings.Contains(err.Error(), "hash") {
		t.Errorf("outside verifier on the tampered export: got %v, want a hash mismatch", err)
	}
}
