package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// Ten agents rotate against fleetd whose state is in PostgreSQL (a real
// server of the test's own), then again after fleetd restarted on the same
// database: the devices, their versions and the audit chains survive the
// restart, every chain verifies, and the events spread over several
// chains. The statements per rotation are logged for sizing.
func TestRotationOnPostgres(t *testing.T) {
	const n = 10
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	dsn := pg.NewSchema(t)
	ctx := context.Background()
	open := func() *pgstore.Store {
		st, err := pgstore.Open(ctx, dsn, pgstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Store = st })
	var dirs []string
	for i := range n {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("pg-%02d", i)))
	}
	stop := runAgentsStoppable(t, dirs)
	rotate := func(v uint32) {
		t.Helper()
		before := st.Stats().Statements
		resp, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Rotations) != n {
			t.Fatalf("rotations requested: got %d, want %d", len(resp.Rotations), n)
		}
		eventually(t, 60*time.Second, fmt.Sprintf("all devices active at v%d", v), allAt(t, f.Admin, n, v))
		t.Logf("rotation to v%d: %.1f PostgreSQL statements per device (every statement fleetd sent meanwhile, reads included)",
			v, float64(st.Stats().Statements-before)/n)
	}
	rotate(2)

	stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	st = open()
	f.Config.Store = st
	f.Restart(t)
	ds, err := f.Admin.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != n {
		t.Fatalf("devices after restart: %d, want %d", len(ds), n)
	}
	runAgents(t, dirs, nil)
	rotate(3)

	recs, err := st.VerifyAudit(ctx)
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	chains := map[uint32]bool{}
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error { chains[r.Chain] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if recs < 4*n || len(chains) < 2 {
		t.Errorf("audit: %d records on %d chains, want at least %d records on several chains", recs, len(chains), 4*n)
	}
}
