package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// fleetd init --store postgres://… makes the schema; fleetd run with the
// URL from KEYFLEET_STORE keeps what the admin API provisions in
// PostgreSQL, not in DATA/fleet.db.
func TestStorePostgres(t *testing.T) {
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
	data := filepath.Join(t.TempDir(), "data")
	cmd := root()
	cmd.SetArgs([]string{"init", "--data", data, "--insecure-soft-keys", "--log-level", "warn", "--store", dsn})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("fleetd init --store: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t.Setenv("KEYFLEET_STORE", dsn)
	run := root()
	run.SetArgs([]string{"run", "--data", data, "--insecure-soft-keys", "--log-level", "warn",
		"--mqtt-listen", fleettest.FreeAddr(t), "--admin-listen", fleettest.FreeAddr(t), "--ops-listen", "off"})
	done := make(chan error, 1)
	go func() { done <- run.ExecuteContext(ctx) }()
	p := datadir.Paths{Dir: data}
	addrFile := filepath.Join(p.AdminDir(), "address")
	var addr []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if addr, err = os.ReadFile(addrFile); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("fleetd run --store exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("fleetd run did not write its admin address within 30 s")
		}
	}
	cred, err := client.LoadCredential(p.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	admin := client.New(strings.TrimSpace(string(addr)), cred)
	if _, err := provision.Device(ctx, admin, "pg-dev", filepath.Join(t.TempDir(), "pg-dev"), ""); err != nil {
		t.Fatalf("provision through fleetd on PostgreSQL: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("fleetd run: %v", err)
	}
	if _, err := os.Stat(p.Store()); !os.IsNotExist(err) {
		t.Errorf("%s: %v, want no bbolt file", p.Store(), err)
	}
	st, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.GetDevice(context.Background(), "pg-dev"); err != nil {
		t.Errorf("the provisioned device in PostgreSQL: %v", err)
	}
}
