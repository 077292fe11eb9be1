// Package fleettest starts real keyfleet parts for tests: a SoftHSM2 token
// of the test's own, a fleetd with its embedded broker on loopback ports,
// and provisioned device keystores. Nothing here is a fake.
//
// SoftHSM2 reads SOFTHSM2_CONF once per process, so a test binary that uses
// tokens calls Main from its TestMain; each test then gets its own token.
package fleettest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// Main configures SoftHSM2 in a temporary directory, runs the tests and
// cleans up. Use it as: func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keyfleet-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if _, err := softhsm.Configure(dir); err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err)
		return 1
	}
	if _, err := softhsm.Module(); err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err, "- run `make test`, which installs it")
		return 1
	}
	return m.Run()
}

var tokenSeq atomic.Uint64

// PIN is the user PIN of test tokens.
const PIN = hsm.PIN("fleettest-pin")

// NewToken initialises a fresh SoftHSM2 token and returns its config.
func NewToken(t testing.TB) hsm.Config {
	t.Helper()
	module, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("t%d-%d", os.Getpid(), tokenSeq.Add(1))
	if err := hsm.InitToken(module, label, "fleettest-so", PIN); err != nil {
		t.Fatalf("init token: %v", err)
	}
	return hsm.Config{Module: module, TokenLabel: label, PIN: PIN}
}

// Fleet is a running fleetd for a test.
type Fleet struct {
	*server.Server
	Config server.Config
	Admin  *client.Client
	Dir    string
}

// Logger returns a logger that writes to the test log at warn level, so
// failures show what fleetd complained about without drowning the output.
// KEYFLEET_TEST_LOG=debug (or info) shows more when chasing a failure.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if v := os.Getenv("KEYFLEET_TEST_LOG"); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// StartFleet initialises and starts fleetd on loopback with a fresh token.
// mod may adjust the config (grace, clock, ...) before Init.
func StartFleet(t testing.TB, mod func(*server.Config)) *Fleet {
	t.Helper()
	f := InitFleet(t, mod)
	f.Restart(t)
	return f
}

// InitFleet runs fleetd init with a fresh token but does not start it, for
// tests that must set up something (an external broker) with its files.
func InitFleet(t testing.TB, mod func(*server.Config)) *Fleet {
	t.Helper()
	dir := t.TempDir()
	cfg := server.Config{
		DataDir: filepath.Join(dir, "fleetd"), HSM: NewToken(t),
		MQTTAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Logger: Logger(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx := context.Background()
	if err := server.Init(ctx, cfg); err != nil {
		t.Fatalf("fleetd init: %v", err)
	}
	return &Fleet{Config: cfg, Dir: dir}
}

// Restart starts fleetd again on the same data (after Close or a crash).
func (f *Fleet) Restart(t testing.TB) {
	t.Helper()
	srv, err := server.Start(context.Background(), f.Config)
	if err != nil {
		t.Fatalf("fleetd start: %v", err)
	}
	f.Server = srv
	// Keep the ports for restarts, so devices find the broker again.
	f.Config.MQTTAddr, f.Config.AdminAddr = srv.MQTTAddr(), srv.AdminAddr()
	tc, err := client.LoadCredential(datadir.Paths{Dir: f.Config.DataDir}.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	f.Admin = client.New(srv.AdminAddr(), tc)
	t.Cleanup(func() { _ = srv.Close() })
}

// AddDevice provisions a device through the admin API, as fleetctl device
// add does, and returns its keystore directory.
func (f *Fleet) AddDevice(t testing.TB, id string) string {
	t.Helper()
	dir := filepath.Join(f.Dir, "devices", id)
	if _, err := provision.Device(context.Background(), f.Admin, id, dir, ""); err != nil {
		t.Fatal(err)
	}
	return dir
}
