package grafana

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/simulator"
)

// The fleet Prometheus watches: simDevices run by the simulator with its
// faults, and fragileDevices of the test's own (see fragile), labelled
// fragileLabel. No campaign mixes the two.
const (
	simDevices     = 50
	fragileDevices = 3
	fragileLabel   = "fragile"
)

// simFaults are the simulator's injected failures: agents that crash at a
// step of their first rotation and restart from their keystore, agents
// whose connection drops every few seconds, and messages lost or
// delivered twice (agents report every second, so that fleetd resends).
// They show in resent requests, reconnections and the rotations' times; a
// fixed seed picks the same devices each run.
var simFaults = simulator.Faults{
	CrashFraction: 0.1,
	FlapFraction:  0.04, FlapEvery: 3 * time.Second,
	DropRate: 0.02, DupRate: 0.05, ReportEvery: time.Second,
	Seed: 9,
}

// simulation is a simulator run in the background.
type simulation struct {
	devices string // the agents' keystore directories, one per device id
	cancel  context.CancelFunc
	done    chan struct{}
	rep     *simulator.Report
	err     error
}

// startSimulation runs the simulator against f: simDevices provisioned
// through the admin API as fleetctl does, one real agent each, with
// simFaults, kept connected (its soak mode, a few reconnecting each
// minute) until stop. The test's campaigns and revocation are the work.
func startSimulation(t *testing.T, f *fleettest.Fleet) *simulation {
	t.Helper()
	// The simulator points SOFTHSM2_CONF at a token directory of its own
	// (for its baseline, unused here); restore the test binary's.
	t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF"))
	ctx, cancel := context.WithCancel(context.Background())
	s := &simulation{devices: memDir(t), cancel: cancel, done: make(chan struct{})}
	cfg := simulator.Config{
		Devices: simDevices, Server: f.AdminAddr(), Credential: datadir.Paths{Dir: f.Config.DataDir}.AdminDir(),
		Dir: t.TempDir(), DeviceDir: s.devices, Logger: fleettest.Logger(t), Soak: time.Hour, Faults: simFaults,
		RoundTimeout: time.Minute,
	}
	go func() {
		defer close(s.done)
		s.rep, s.err = simulator.Run(ctx, cfg)
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

// memDir returns a temporary directory in /dev/shm when there is one, as
// the simulator's own default for keystores: fifty agents writing small
// files would otherwise wait on a disk the other tests share.
func memDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "keyfleet-grafana-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// stop ends the run and returns its report.
func (s *simulation) stop() (*simulator.Report, error) {
	s.cancel()
	<-s.done
	return s.rep, s.err
}

// failed reports a run that ended before stop: it failed to start.
func (s *simulation) failed() error {
	select {
	case <-s.done:
		return fmt.Errorf("simulator ended early: %v", s.err)
	default:
		return nil
	}
}

// waitSimulated waits until the simulator's devices are provisioned,
// connected and hold fleetd's delegation (saved in their keystores), as
// the simulator's own start waits for, so that what follows happens in
// its steady run; it returns their ids, sorted.
func waitSimulated(t *testing.T, f *fleettest.Fleet, s *simulation) []string {
	t.Helper()
	var ids []string
	delegated := map[string]bool{}
	eventually(t, 90*time.Second, fmt.Sprintf("%d simulated devices connected", simDevices), func() bool {
		if err := s.failed(); err != nil {
			t.Fatal(err)
		}
		ds, err := f.Admin.Devices(context.Background())
		if err != nil {
			return false
		}
		ids = ids[:0]
		for _, d := range ds {
			if d.Labels[fragileLabel] == "" {
				ids = append(ids, d.ID)
			}
		}
		if len(ids) < simDevices {
			return false
		}
		for _, id := range ids {
			if !f.Broker().Present(id) {
				return false
			}
			if !delegated[id] {
				ks, err := device.OpenKeystore(filepath.Join(s.devices, id))
				if err != nil || ks.Delegation() == nil {
					return false
				}
				delegated[id] = true
			}
		}
		return true
	})
	slices.Sort(ids)
	return ids
}

// fragile is the test's own devices, labelled fragileLabel: "fragile-0"
// and "fragile-2" run from the start on a link the test can cut (their
// radio hears nothing while their session stays up, so a rotation times
// out while they are connected, which a campaign counts as failed);
// "fragile-1" is switched off until the test starts it (a campaign finds
// it away).
type fragile struct {
	f    *fleettest.Fleet
	dirs []string
	cut  atomic.Bool

	mu        sync.Mutex
	delegated map[string]bool
}

// The fragile device that is off until started.
const offFragile = "fragile-1"

// addFragile provisions the test's fragile devices, labelled.
func addFragile(t *testing.T, f *fleettest.Fleet) *fragile {
	t.Helper()
	fr := &fragile{f: f, delegated: map[string]bool{}}
	for i := range fragileDevices {
		id := fmt.Sprintf("fragile-%d", i)
		fr.dirs = append(fr.dirs, f.AddDevice(t, id))
		if _, err := f.Admin.Label(context.Background(), id, adminapi.LabelRequest{Set: map[string]string{fragileLabel: "yes"}}); err != nil {
			t.Fatal(err)
		}
	}
	return fr
}

func (fr *fragile) link(dir string, payload []byte) [][]byte {
	if dir == "down" && fr.cut.Load() {
		return nil
	}
	return [][]byte{payload}
}

// start runs the agents of the fragile devices that on selects and waits
// until each holds fleetd's delegation, so that, once the link is mended,
// the messages fleetd sends again are ones it can verify.
func (fr *fragile) start(t *testing.T, on func(id string) bool) {
	t.Helper()
	var dirs []string
	for _, d := range fr.dirs {
		if on(filepath.Base(d)) {
			dirs = append(dirs, d)
		}
	}
	runAgents(t, dirs, func(o *device.Options) {
		o.Link = fr.link
		o.OnEvent = func(e device.Event) {
			if e.Kind == device.EventDelegation {
				fr.mu.Lock()
				fr.delegated[e.Device] = true
				fr.mu.Unlock()
			}
		}
	})
	eventually(t, 30*time.Second, fmt.Sprintf("%d fragile agents connected", len(dirs)), func() bool {
		fr.mu.Lock()
		defer fr.mu.Unlock()
		for _, d := range dirs {
			if !fr.delegated[filepath.Base(d)] || !fr.f.Broker().Present(filepath.Base(d)) {
				return false
			}
		}
		return true
	})
}

// campaign creates an identity campaign and returns its id.
func campaign(t *testing.T, f *fleettest.Fleet, req adminapi.CampaignRequest) string {
	t.Helper()
	req.Kind = adminapi.CampaignKindIdentity
	c, err := f.Admin.CreateCampaign(context.Background(), req)
	if err != nil {
		t.Fatalf("campaign %q: %v", req.Selector, err)
	}
	return c.ID
}

// waitCampaign waits until campaign id leaves the running state and
// returns it.
func waitCampaign(t *testing.T, f *fleettest.Fleet, s *simulation, id string, timeout time.Duration) adminapi.Campaign {
	t.Helper()
	var c adminapi.Campaign
	eventually(t, timeout, "campaign "+id+" to stop running", func() bool {
		if err := s.failed(); err != nil {
			t.Fatal(err)
		}
		var err error
		c, err = f.Admin.Campaign(context.Background(), id, true)
		return err == nil && c.State != adminapi.CampaignStateRunning
	})
	return c
}

// driveFleet is the fleet's day while Prometheus scrapes: a revocation; a
// staged campaign over the simulated fleet, through its faults, to
// completion; a campaign over the fragile devices, their link cut, which
// pauses itself in its canary stage and is rolled back; then, the link
// mended and the device that was off started, one that rotates them, so
// that their failed and cancelled rotations recover (M10). It returns the
// id of the campaign that paused itself.
func driveFleet(t *testing.T, f *fleettest.Fleet, s *simulation, ids []string, fr *fragile) string {
	t.Helper()
	ctx := context.Background()
	// M5: the last simulated device is revoked; its agent comes back and
	// the broker refuses it.
	if _, err := f.Admin.Revoke(ctx, ids[len(ids)-1], "lost"); err != nil {
		t.Fatal(err)
	}
	// Tolerant of the injected faults: half the reached devices of a stage
	// may fail, judged once three were reached.
	fleet := campaign(t, f, adminapi.CampaignRequest{Selector: "!" + fragileLabel, Stages: []float64{0.1, 0.5, 1},
		MaxFailure: 0.5, MinReached: 3, DeviceTimeoutSeconds: 20})

	// The canary stage is fragile-0, its link cut, and fragile-1, off: the
	// first times out while connected and pauses the campaign; the second
	// is away, its rotation open, which the rollback cancels.
	fr.cut.Store(true)
	canary := campaign(t, f, adminapi.CampaignRequest{Selector: fragileLabel + "=yes", Stages: []float64{0.6, 1},
		MaxFailure: 0, MinReached: 1, DeviceTimeoutSeconds: 4})
	paused := waitCampaign(t, f, s, canary, 60*time.Second)
	if paused.State != adminapi.CampaignStatePaused || paused.Stage != 0 || !strings.Contains(paused.Reason, "paused itself") {
		t.Fatalf("canary campaign %s in stage %d (%s), want paused itself in stage 1: %+v",
			paused.State, paused.Stage+1, paused.Reason, paused.Devices)
	}
	rb, err := f.Admin.CampaignAction(ctx, canary, adminapi.CampaignRollback)
	if err != nil {
		t.Fatal(err)
	}
	if rb.State != adminapi.CampaignStateRolledBack || !strings.Contains(rb.Reason, ": 1 unfinished") {
		t.Fatalf("after rollback: %s (%s), want rolled back with the away device's rotation cancelled; paused as %+v",
			rb.State, rb.Reason, paused.Devices)
	}
	fr.cut.Store(false)
	fr.start(t, func(id string) bool { return id == offFragile })
	again := campaign(t, f, adminapi.CampaignRequest{Selector: fragileLabel + "=yes", Stages: []float64{0.5, 1},
		MaxFailure: 0.5, MinReached: 1, DeviceTimeoutSeconds: 20})

	for _, id := range []string{fleet, again} {
		if c := waitCampaign(t, f, s, id, 90*time.Second); c.State != adminapi.CampaignStateCompleted {
			t.Fatalf("campaign %s (%s) %s: %s", id, c.Selector, c.State, c.Reason)
		}
	}
	return canary
}
