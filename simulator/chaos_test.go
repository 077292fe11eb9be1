package simulator

import (
	"context"
	"crypto/x509"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
)

// The small chaos run of make test: 300 devices rotate while some crash at
// a random step and restart, some are offline when the rotation is asked
// for and return later, and some keep losing their connection. Every device
// converges, each keeps a credential fleetd accepts, no version is issued
// twice and the audit chain verifies.
func TestChaos(t *testing.T) {
	const devices, rotations = 300, 2
	var dataDir string
	deviceDir := t.TempDir()
	rep, err := Run(context.Background(), Config{
		Devices: devices, Rotations: rotations, DeviceDir: deviceDir, Dir: t.TempDir(),
		RoundTimeout: 90 * time.Second,
		Faults: Faults{CrashFraction: 0.05, OfflineFraction: 0.3, OfflineFor: 3 * time.Second,
			FlapFraction: 0.05, FlapEvery: 700 * time.Millisecond, Seed: 42},
		// Offline devices stay away past the grace window: the versions
		// the others superseded are retired while they are gone.
		ServerMod: func(c *server.Config) { dataDir = c.DataDir; c.Grace = time.Second },
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RotationsCompleted != devices*rotations || rep.RotationsFailed != 0 {
		t.Fatalf("rotations: %d completed, %d failed (%v), not converged %v; want %d, 0",
			rep.RotationsCompleted, rep.RotationsFailed, rep.FailuresByReason, rep.NotConverged, devices*rotations)
	}
	if rep.Faults.Crashes != 15 || rep.Faults.Offline != 90*rotations || rep.Faults.Flaps == 0 {
		t.Errorf("faults injected: %+v, want 15 crashes, %d offline, some flaps", rep.Faults, 90*rotations)
	}

	checkAftermath(t, datadir.Paths{Dir: dataDir}.Store(), deviceDir, devices, rotations)
}

// checkAftermath reads the store fleetd left and the devices' keystores:
// the audit chain verifies, no version was issued twice, and every device
// holds, as its active credential, the certificate fleetd records as active
// and accepts.
func checkAftermath(t *testing.T, storePath, deviceDir string, devices, rotations int) {
	t.Helper()
	st, err := store.OpenBolt(storePath, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.VerifyAudit(ctx); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	issued := map[string]int{}
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Action == "issued" {
			issued[fmt.Sprintf("%s/%d", r.Device, r.Version)]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for k, n := range issued {
		if n != 1 {
			t.Errorf("%s issued %d times", k, n)
		}
	}
	if len(issued) != devices*rotations {
		t.Errorf("versions issued: got %d, want %d", len(issued), devices*rotations)
	}
	n := 0
	if err := st.ForEachDevice(ctx, func(d *store.Device) error {
		n++
		ks, err := device.OpenKeystore(filepath.Join(deviceDir, d.ID))
		if err != nil {
			return err
		}
		active := d.Slot(protocol.SlotIdentity).Active()
		if active == nil || active.Version != uint32(rotations+1) {
			t.Errorf("%s: fleetd's active version %v, want %d", d.ID, active, rotations+1)
			return nil
		}
		if !active.Accepted(time.Now()) {
			t.Errorf("%s: active version not accepted", d.ID)
		}
		if s := ks.State(); s.Active != active.Version || s.Pending != 0 {
			t.Errorf("%s: keystore %+v, fleetd active %d", d.ID, s, active.Version)
			return nil
		}
		c, err := ks.Cert(active.Version)
		if err != nil {
			return err
		}
		want, err := x509.ParseCertificate(active.Cert)
		if err != nil {
			return err
		}
		if !c.Equal(want) {
			t.Errorf("%s: the device's certificate is not the one fleetd issued", d.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != devices {
		t.Errorf("devices in the store: got %d, want %d", n, devices)
	}
}

// The same campaign with fleetd as a separate process that is SIGKILLed
// twice and restarted once (its embedded broker with it) while the devices
// rotate: the make test version of make chaos.
func TestChaosWithFleetdKills(t *testing.T) {
	const devices, rotations = 300, 1
	bin := filepath.Join(t.TempDir(), "fleetd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/fleetd").CombinedOutput(); err != nil {
		t.Fatalf("go build fleetd: %v\n%s", err, out)
	}
	dir, deviceDir := t.TempDir(), t.TempDir()
	rep, err := Run(context.Background(), Config{
		Devices: devices, Rotations: rotations, Dir: dir, DeviceDir: deviceDir, FleetdBin: bin,
		FleetdArgs:   []string{"--grace=1s"},
		RoundTimeout: 100 * time.Second,
		Faults: Faults{CrashFraction: 0.05, OfflineFraction: 0.3, OfflineFor: 3 * time.Second,
			FleetdKills: 2, BrokerRestarts: 1, Seed: 7},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RotationsCompleted != devices*rotations || rep.RotationsFailed != 0 {
		t.Fatalf("rotations: %d completed, %d failed (%v), not converged %v", rep.RotationsCompleted,
			rep.RotationsFailed, rep.FailuresByReason, rep.NotConverged)
	}
	if rep.Faults.FleetdKills != 2 || rep.Faults.BrokerRestarts != 1 {
		t.Errorf("faults: %+v, want 2 fleetd kills and 1 broker restart", rep.Faults)
	}
	checkAftermath(t, datadir.Paths{Dir: filepath.Join(dir, "fleetd")}.Store(), deviceDir, devices, rotations)
}

// Messages lost, duplicated and delayed on every link, and skewed device
// clocks: every rotation still completes (periodic reports let fleetd
// resend what was lost), and nothing is issued twice.
func TestMessageFaults(t *testing.T) {
	const devices = 100
	var dataDir string
	deviceDir := t.TempDir()
	rep, err := Run(context.Background(), Config{
		Devices: devices, Rotations: 1, Dir: t.TempDir(), DeviceDir: deviceDir, RoundTimeout: 150 * time.Second,
		Faults: Faults{DropRate: 0.03, DupRate: 0.03, DelayRate: 0.03, Delay: 500 * time.Millisecond,
			SkewFraction: 0.2, Skew: 3 * time.Minute, ReportEvery: 2 * time.Second, Seed: 3},
		ServerMod: func(c *server.Config) { dataDir = c.DataDir },
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RotationsCompleted != devices || rep.RotationsFailed != 0 {
		t.Fatalf("rotations: %d completed, %d failed (%v)", rep.RotationsCompleted, rep.RotationsFailed, rep.NotConverged)
	}
	t.Logf("provision %.1f s, rotation phase %.1f s, p99 %.0f ms", rep.ProvisionS, rep.DurationS, rep.P99ms)
	if f := rep.Faults; f.Dropped == 0 || f.Duplicated == 0 || f.Delayed == 0 || f.Skewed != 20 {
		t.Errorf("faults: %+v, want some of each and 20 skewed clocks", f)
	}
	checkAftermath(t, datadir.Paths{Dir: dataDir}.Store(), deviceDir, devices, 1)
}
