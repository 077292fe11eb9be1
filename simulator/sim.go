package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/internal/progress"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
)

// Config configures a run. Zero values take the defaults.
type Config struct {
	// Devices to simulate; required.
	Devices int
	// Rotations per device; 0 means 1.
	Rotations int
	// Server is the admin API address of a running fleetd; empty starts
	// one in-process. Several addresses, comma-separated, are the nodes of
	// one cluster: provisioning and requests go through the first that
	// answers, failing over to the next.
	Server string
	// Credential is the operator credential directory for Server.
	Credential string
	// Dir is the work directory (keystores, in-process fleetd); empty
	// means a temporary directory removed at the end.
	Dir string
	// DeviceDir holds the simulated devices' keystores; empty means a
	// temporary directory in /dev/shm when there is one, else under Dir.
	// Real devices each write their own flash; thousands of simulated ones
	// writing small files to one disk would measure the disk, not keyfleet.
	// fleetd's store always stays in Dir, on disk.
	DeviceDir string
	// RoundTimeout bounds each round; 0 means 2 minutes plus 20 ms per device.
	RoundTimeout time.Duration
	// Progress receives a live progress bar; nil means none.
	Progress io.Writer
	// Logger for the agents and the in-process fleetd; nil discards.
	Logger *slog.Logger
	// ServerMod adjusts the in-process fleetd's config.
	ServerMod func(*server.Config)
	// FleetdBin, if set, runs fleetd from this binary as a child process,
	// which the faults FleetdKills and BrokerRestarts need.
	FleetdBin string
	// FleetdArgs are added to the spawned fleetd's run command line
	// (e.g. --grace=10s).
	FleetdArgs []string
	spawned    *spawned
	// Nodes, if positive (with FleetdBin and Store), spawns this many
	// fleetd nodes on the PostgreSQL store Store: one init, the data
	// directory copied per node, one token. Devices get every node's
	// broker.
	Nodes int
	// Store is the PostgreSQL URL the spawned nodes share (Nodes).
	Store string
	// KillNode, if positive, is the node (1-based) SIGKILLed for good
	// when KillAt of the first round's rotations have completed.
	KillNode int
	KillAt   float64
	// StorePID, if set, is the PostgreSQL postmaster's process id on this
	// machine: the report adds its CPU (backends included).
	StorePID int
	nodes    []*spawned
	admins   *adminSet
	// Fleet, if positive, runs the fleet model: this many devices, at most
	// MaxConnected awake at a time (default 1,000); Devices is ignored.
	Fleet        int
	MaxConnected int
	// Soak, if positive, keeps every device connected this long before the
	// rotations (if any), SoakChurn of them (default 0.05) reconnecting per
	// minute, and samples fleetd's memory and goroutines.
	Soak      time.Duration
	SoakChurn float64
	// Rate, if positive, offers rotations at this many per second instead
	// of asking for every device at once: latency under a steady load.
	Rate float64
	// Faults to inject; the zero value injects none.
	Faults Faults
	// Baseline, if positive, measures the raw HSM rates for this long
	// before the run, so that the report gives ratios of the same run.
	Baseline time.Duration
	// Campaign, if set, runs campaign mode instead of rotation rounds:
	// fleetd's staged campaigns drive the rotations (see CampaignMode).
	Campaign *CampaignMode
	// ServerOps is the ops listener (/metrics) of the fleetd at Server,
	// which campaign mode reads M5 and M10 from; a fleetd the simulator
	// starts gets one of its own.
	ServerOps string
	opsAddr   string
}

// fdsPerDevice: the agent's socket and, in-process, the broker's end.
const fdsPerDevice = 2

// Run runs the simulation and returns its report. A run in which some
// rotation failed returns the report and no error; check RotationsFailed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Fleet > 0 {
		if cfg.MaxConnected <= 0 {
			cfg.MaxConnected = 1000
		}
		cfg.Devices = cfg.MaxConnected // what the file budget must fit
	}
	if cfg.Devices <= 0 {
		return nil, errors.New("simulator: --devices must be positive")
	}
	if err := cfg.Faults.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	if (cfg.Faults.FleetdKills > 0 || cfg.Faults.BrokerRestarts > 0) && cfg.FleetdBin == "" {
		return nil, errors.New("simulator: killing or restarting fleetd needs --fleetd-bin")
	}
	if err := cfg.checkNodes(); err != nil {
		return nil, err
	}
	if cfg.Campaign != nil {
		if cfg.Fleet > 0 || cfg.Soak > 0 {
			return nil, errors.New("simulator: campaign mode takes neither --fleet nor --soak")
		}
		if err := cfg.Campaign.validate(cfg.Devices); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
		if _, err := cfg.Campaign.phases(cfg.Faults.FleetdKills); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
		if cfg.Faults.BrokerRestarts > 0 {
			return nil, errors.New("simulator: campaign mode does not restart the broker; use --kill-fleetd")
		}
	}
	if cfg.Rotations == 0 && cfg.Soak == 0 {
		cfg.Rotations = 1
	}
	if cfg.RoundTimeout == 0 {
		cfg.RoundTimeout = 2*time.Minute + time.Duration(cfg.Devices)*20*time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	perDevice := fdsPerDevice
	if cfg.Server != "" || cfg.FleetdBin != "" {
		perDevice = 1 // fleetd holds the other end in its own process
	}
	if err := raiseFileLimit(cfg.Devices*perDevice + 256); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		cfg.Dir = d
	}
	if cfg.DeviceDir == "" {
		cfg.DeviceDir = filepath.Join(cfg.Dir, "devices")
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			if d, err := os.MkdirTemp("/dev/shm", "fleetsim-devices-"); err == nil {
				defer os.RemoveAll(d)
				cfg.DeviceDir = d
			}
		}
	}
	client, hsmOps, stop, addr, err := connectServer(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	defer stop()
	var base *Baseline
	if cfg.Baseline > 0 {
		if base, err = measureBaseline(ctx, cfg.Baseline); err != nil {
			return nil, err
		}
	}

	rep := &Report{Devices: cfg.Devices, Rounds: cfg.Rotations, Server: addr, FailuresByReason: map[string]int{}, NotConverged: []string{}}
	if cfg.Fleet > 0 {
		if err := runFleet(ctx, cfg, client, hsmOps, rep); err != nil {
			return nil, err
		}
		rep.SameProcess = cfg.Server == "" && cfg.FleetdBin == ""
		if base != nil {
			rep.Baseline = base
			rep.RotationsPerHSMSign = rep.RotationsPerSec / base.SignsPerSec
			rep.RotationsPerHSMCert = rep.RotationsPerSec / base.CertsPerSec
		}
		return rep, nil
	}
	fl := newFleet(cfg)
	fl.faults = planFaults(cfg.Faults, fl.ids)
	if cfg.Campaign != nil {
		fl.canary = &canaryFault{}
		fl.faults.f.FleetdKills = 0 // campaign mode kills fleetd itself, mid-campaign
	}
	t0 := time.Now()
	if err := fl.provision(ctx, client); err != nil {
		return nil, err
	}
	rep.ProvisionS = time.Since(t0).Seconds()
	if cfg.admins != nil {
		fl.watch = newNodeWatch(cfg.admins, cfg.nodes, cfg.StorePID)
	}
	if err := fl.start(ctx); err != nil {
		fl.stop()
		return nil, err
	}
	defer fl.stop()

	if cfg.Soak > 0 {
		churn := cfg.SoakChurn
		if churn == 0 {
			churn = 0.05
		}
		rep.Soak = fl.soak(ctx, client, cfg.Soak, churn, 15*time.Second)
	}
	ops0 := hsmOps(ctx)
	up0, down0 := fl.bytes()
	if fl.watch != nil {
		if err := fl.watch.begin(ctx); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	if cfg.Campaign != nil {
		rep.Rounds = 0
		if err := fl.runCampaigns(ctx, client, *cfg.Campaign, cfg.opsAddr, rep); err != nil {
			return nil, err
		}
		cfg.Rotations = 0 // no rounds
	}
	var lat []time.Duration
	failed := map[string]bool{}
	for round := 1; round <= cfg.Rotations; round++ {
		l, bad, reasons, err := fl.round(ctx, client, round)
		if err != nil {
			return nil, err
		}
		lat = append(lat, l...)
		rep.RotationsCompleted += len(l)
		rep.RotationsFailed += len(bad)
		for _, id := range bad {
			failed[id] = true
		}
		for k, v := range reasons {
			rep.FailuresByReason[k] += v
		}
	}
	dur := time.Since(start)
	up1, down1 := fl.bytes()
	rep.DurationS = dur.Seconds()
	rep.RequestS = fl.requestTime.Seconds()
	rep.RotationsPerSec = float64(rep.RotationsCompleted) / dur.Seconds()
	rep.BytesUp, rep.BytesDown = up1-up0, down1-down0
	rep.HSMOps = hsmOps(ctx) - ops0
	if fl.watch != nil {
		if rep.Nodes, err = fl.watch.end(ctx, rep.RotationsCompleted); err != nil {
			return nil, err
		}
		client = cfg.admins.current() // the first may be the one killed
	}

	if rep.RotationsCompleted > 0 {
		rep.BytesPerRotation = float64(rep.BytesUp+rep.BytesDown) / float64(rep.RotationsCompleted)
		rep.HSMOpsPerRotation = float64(rep.HSMOps) / float64(rep.RotationsCompleted)
	}
	if cfg.Campaign == nil { // campaign mode filled it
		rep.fillLatency(lat)
	}
	if rep.RotationsCompleted > 0 {
		rep.BytesUpPerRotation = float64(rep.BytesUp) / float64(rep.RotationsCompleted)
		rep.BytesDownPerRotation = float64(rep.BytesDown) / float64(rep.RotationsCompleted)
	}
	if st, err := client.Status(ctx); err == nil {
		rep.ConnectedDevices = st.ConnectedClient - 1 // fleetd's own session
		rep.FleetdRSSBytes, rep.FleetdGoroutines = st.RSSBytes, st.Goroutines
		if rep.ConnectedDevices > 0 {
			k := float64(rep.ConnectedDevices) / 1000
			rep.FleetdRSSPer1kBytes = float64(st.RSSBytes) / k
			rep.FleetdGoroutinesPer1k = float64(st.Goroutines) / k
		}
	}
	rep.SimulatorRSSBytes = procstat.RSS()
	rep.Faults = fl.faults.counts()
	rep.OfferedRate = cfg.Rate
	rep.SameProcess = cfg.Server == "" && cfg.FleetdBin == ""
	if base != nil {
		rep.Baseline = base
		rep.RotationsPerHSMSign = rep.RotationsPerSec / base.SignsPerSec
		rep.RotationsPerHSMCert = rep.RotationsPerSec / base.CertsPerSec
	}
	for id := range failed {
		rep.NotConverged = append(rep.NotConverged, id)
	}
	sort.Strings(rep.NotConverged)
	return rep, nil
}

// connectServer starts an in-process fleetd or connects to cfg.Server.
func connectServer(ctx context.Context, cfg *Config) (*client.Client, func(context.Context) uint64, func(), string, error) {
	if cfg.Nodes > 0 {
		return spawnCluster(ctx, cfg)
	}
	if addrs := splitAddrs(cfg.Server); len(addrs) > 1 {
		if _, err := softhsm.Configure(filepath.Join(cfg.Dir, "softhsm")); err != nil {
			return nil, nil, nil, "", err
		}
		set, err := connectServers(ctx, cfg, addrs)
		if err != nil {
			return nil, nil, nil, "", err
		}
		cfg.admins = set
		if set.ops != nil {
			cfg.opsAddr = set.ops[0] // campaign mode's M5 and M10: the first node's
		}
		ops := func(ctx context.Context) uint64 {
			var n uint64
			for _, c := range set.cs {
				if s, err := c.Status(ctx); err == nil {
					n += s.HSMOps
				}
			}
			return n
		}
		return set.current(), ops, func() {}, cfg.Server, nil
	}
	if cfg.FleetdBin != "" {
		if _, err := softhsm.Configure(filepath.Join(cfg.Dir, "softhsm")); err != nil {
			return nil, nil, nil, "", err
		}
		sp, err := spawnFleetd(ctx, cfg.FleetdBin, cfg.Dir, cfg.FleetdArgs)
		if err != nil {
			return nil, nil, nil, "", err
		}
		cfg.spawned, cfg.opsAddr = sp, sp.opsAddr
		return sp.client, sp.ops, sp.stop, "spawned " + cfg.FleetdBin, nil
	}
	if cfg.Server != "" {
		// A token directory of our own, for the baseline measurement.
		if _, err := softhsm.Configure(filepath.Join(cfg.Dir, "softhsm")); err != nil {
			return nil, nil, nil, "", err
		}
		tc, err := client.LoadCredential(cfg.Credential)
		if err != nil {
			return nil, nil, nil, "", err
		}
		c := client.New(cfg.Server, tc)
		cfg.opsAddr = cfg.ServerOps
		ops := func(ctx context.Context) uint64 {
			s, err := c.Status(ctx)
			if err != nil {
				return 0
			}
			return s.HSMOps
		}
		return c, ops, func() {}, cfg.Server, nil
	}
	mod := cfg.ServerMod
	if cfg.Campaign != nil {
		mod = func(c *server.Config) {
			c.OpsAddr = "127.0.0.1:0" // campaign mode reads /metrics
			if cfg.ServerMod != nil {
				cfg.ServerMod(c)
			}
		}
	}
	srv, c, err := startInProcess(ctx, cfg.Dir, cfg.Logger, mod, nil)
	if err != nil {
		return nil, nil, nil, "", err
	}
	cfg.opsAddr = srv.OpsAddr()
	return c, func(context.Context) uint64 { return srv.HSMOps() },
		func() { _ = srv.Close() }, "in-process " + srv.MQTTAddr(), nil
}

// raiseFileLimit lifts the soft open-file limit to the hard one and
// refuses a run that needs more than the hard limit allows.
func raiseFileLimit(need int) error {
	limit, err := procstat.RaiseFileLimit()
	if err != nil {
		return fmt.Errorf("simulator: open-file limit: %w", err)
	}
	if uint64(need) > limit {
		return fmt.Errorf("simulator: this run needs about %d open files (%d per device) but the process may hold %d; "+
			"run fleetd as a separate process (--server) or simulate fewer devices per process", need, fdsPerDevice, limit)
	}
	return nil
}

// fleet is the simulated devices.
type fleet struct {
	cfg    Config
	ids    []string
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup

	agentsMu sync.Mutex
	agents   map[string]*running
	pastUp   uint64 // bytes of agents that were replaced (crash, offline)
	pastDown uint64
	faults   *faultPlan

	mu        sync.Mutex
	rotateAt  map[string]time.Time // device -> when its current rotate arrived
	activated map[string]mark      // device -> last activation
	connected map[string]bool
	// connectedAt and refusedAt are each device's last connection and
	// last refusal by the broker (campaign mode's rollback check).
	connectedAt map[string]time.Time
	refusedAt   map[string]time.Time
	// canary is campaign mode's injected failure; nil in other modes.
	canary    *canaryFault
	delegated map[string]bool
	wake      chan struct{}
	events    map[device.EventKind]*atomic.Uint64
	// watch follows the nodes of a several-node run; nil with one fleetd.
	watch *nodeWatch
	// requestTime is the rotation requests' time so far (Report.RequestS).
	requestTime time.Duration
}

type mark struct {
	version uint32
	at      time.Time
	took    time.Duration // since the rotate for this version arrived
}

func newFleet(cfg Config) *fleet {
	f := &fleet{cfg: cfg, rotateAt: map[string]time.Time{}, activated: map[string]mark{}, connected: map[string]bool{}, delegated: map[string]bool{},
		connectedAt: map[string]time.Time{}, refusedAt: map[string]time.Time{},
		wake: make(chan struct{}, 1), events: map[device.EventKind]*atomic.Uint64{}}
	// A run's own prefix: against a shared fleetd (--server) a second run
	// must not collide with the devices of the first.
	run := protocol.NewID()[:2]
	for i := 0; i < cfg.Devices; i++ {
		f.ids = append(f.ids, fmt.Sprintf("s%x-%07d", run, i))
	}
	for _, k := range []device.EventKind{device.EventConnected, device.EventRefused, device.EventRotate, device.EventEnrolled,
		device.EventCertStored, device.EventActivated, device.EventRetired, device.EventRejected, device.EventDisconnected,
		device.EventDelegation} {
		f.events[k] = &atomic.Uint64{}
	}
	return f
}

// bar shows a phase's progress on cfg.Progress (nil: none): a bar on a
// terminal, a line every 5 s in a log.
func (f *fleet) bar(n int, desc string) *progress.Bar {
	return progress.New(f.cfg.Progress, n, desc, progress.Options{Unit: "dev"})
}

func (f *fleet) provision(ctx context.Context, c *client.Client) error {
	bar := f.bar(len(f.ids), "provisioning")
	defer bar.Finish()
	return provisionAll(ctx, c, f.ids, func(id string) string { return filepath.Join(f.cfg.DeviceDir, id) }, 32, func() {
		bar.Add(1)
	})
}

func (f *fleet) onEvent(e device.Event) {
	if c := f.events[e.Kind]; c != nil {
		c.Add(1)
	}
	if f.watch != nil {
		switch e.Kind {
		case device.EventDisconnected:
			f.watch.onDisconnected(e.Device, e.At)
		case device.EventConnected:
			f.watch.onConnected(e.Device, e.At)
		}
	}
	f.mu.Lock()
	switch e.Kind {
	case device.EventRotate:
		f.rotateAt[e.Device] = e.At
	case device.EventActivated:
		m := mark{version: e.Version, at: e.At}
		if r, ok := f.rotateAt[e.Device]; ok {
			m.took = e.At.Sub(r)
		}
		f.activated[e.Device] = m
	case device.EventRefused:
		f.refusedAt[e.Device] = e.At
	case device.EventConnected:
		f.connected[e.Device] = true
		f.connectedAt[e.Device] = e.At
		// An agent that died after promoting its new version, before its
		// activated went out, comes back connected with it: the rotation
		// is done (its hello tells fleetd).
		if r, ok := f.rotateAt[e.Device]; ok && e.Version > f.activated[e.Device].version {
			f.activated[e.Device] = mark{version: e.Version, at: e.At, took: e.At.Sub(r)}
		}
	case device.EventDelegation:
		f.delegated[e.Device] = true
	default:
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// waitFor waits until done() counts n or the round times out, showing
// progress; it returns the final count.
func (f *fleet) waitFor(ctx context.Context, n int, desc string, done func() int) (int, error) {
	bar := f.bar(n, desc)
	timeout := time.NewTimer(f.cfg.RoundTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		f.mu.Lock()
		got := done()
		f.mu.Unlock()
		bar.Set(got)
		if got >= n {
			bar.Finish()
			return got, nil
		}
		select {
		case <-f.wake:
		case <-tick.C:
		case <-timeout.C:
			return got, nil
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// start runs one agent per device and waits until all are connected.
func (f *fleet) start(ctx context.Context) error {
	f.ctx, f.cancel = context.WithCancel(ctx)
	f.agents = map[string]*running{}
	for _, id := range f.ids {
		if err := f.startAgent(id, true); err != nil {
			return err
		}
	}
	if f.faults.flap != nil {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.flapLoop() }()
	}
	// Connected and holding fleetd's delegation: the first hello has been
	// answered, so what is measured next is rotations only.
	got, err := f.waitFor(ctx, len(f.ids), "connecting", func() int {
		n := 0
		for id := range f.connected {
			if f.delegated[id] {
				n++
			}
		}
		return n
	})
	if err != nil {
		return err
	}
	if got < len(f.ids) {
		return fmt.Errorf("simulator: only %d of %d devices connected in %v", got, len(f.ids), f.cfg.RoundTimeout)
	}
	return nil
}

func (f *fleet) stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

func (f *fleet) bytes() (up, down uint64) {
	f.agentsMu.Lock()
	defer f.agentsMu.Unlock()
	up, down = f.pastUp, f.pastDown
	for _, r := range f.agents {
		u, d := r.agent.Bytes()
		up += u
		down += d
	}
	return up, down
}

// rotateChunk is how many devices one rotation request names.
const rotateChunk = 1000

// round rotates every device once and waits for their activations.
func (f *fleet) round(ctx context.Context, c *client.Client, round int) ([]time.Duration, []string, map[string]int, error) {
	f.goOffline()
	// Rotate this run's devices only, in chunks the API takes in one call,
	// all at once or paced at --rate.
	chunk, tick := rotateChunk, time.Duration(0)
	if f.cfg.Rate > 0 {
		tick = 50 * time.Millisecond
		chunk = max(1, int(f.cfg.Rate*tick.Seconds()+0.5))
	}
	var resp adminapi.RotateResponse
	asked := time.Now()
	next := asked
	for i := 0; i < len(f.ids); i += chunk {
		if tick > 0 {
			time.Sleep(time.Until(next))
			next = next.Add(tick)
		}
		req := adminapi.RotateRequest{Devices: f.ids[i:min(i+chunk, len(f.ids))]}
		r, err := c.Rotate(ctx, req)
		if err != nil && f.cfg.admins != nil { // that node may be the one killed
			if next := f.cfg.admins.failover(ctx, c); next != nil {
				c = next
				r, err = c.Rotate(ctx, req)
			}
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("simulator: round %d: %w", round, err)
		}
		resp.Rotations = append(resp.Rotations, r.Rotations...)
	}
	f.mu.Lock()
	f.requestTime += time.Since(asked)
	f.mu.Unlock()
	reasons := map[string]int{}
	var failed []string
	want := map[string]uint32{}
	for _, r := range resp.Rotations {
		if r.Error != "" {
			reasons["request refused"]++
			failed = append(failed, r.Device)
			continue
		}
		want[r.Device] = r.Version
	}
	reached := func(id string) bool { return f.activated[id].version >= want[id] }
	var disrupt func(int)
	if round == 1 {
		disrupt = f.disruptions(ctx, len(want))
	}
	_, err := f.waitFor(ctx, len(want), fmt.Sprintf("round %d/%d", round, f.cfg.Rotations), func() int {
		n := 0
		for id := range want {
			if reached(id) {
				n++
			}
		}
		if disrupt != nil {
			disrupt(n)
		}
		return n
	})
	if err != nil {
		return nil, nil, nil, err
	}
	// A rotation is complete when fleetd has recorded the activation too,
	// not only when the agent sent it.
	confirmed, err := f.confirm(ctx, c, want)
	if err != nil {
		return nil, nil, nil, err
	}
	var lat []time.Duration
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range want {
		if reached(id) && confirmed[id] {
			lat = append(lat, f.activated[id].took)
			continue
		}
		failed = append(failed, id)
		if reached(id) {
			reasons["activation not recorded by fleetd"]++
		} else {
			reasons["not activated in time"]++
		}
	}
	return lat, failed, reasons, nil
}

// confirm polls fleetd until every device's active version reaches want,
// for at most ten seconds.
func (f *fleet) confirm(ctx context.Context, c *client.Client, want map[string]uint32) (map[string]bool, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ds, err := c.Devices(ctx)
		if err != nil {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("simulator: confirm: %w", err)
			}
			if f.cfg.admins != nil { // that node may be the one killed
				if next := f.cfg.admins.failover(ctx, c); next != nil {
					c = next
				}
			}
			time.Sleep(100 * time.Millisecond) // fleetd may be restarting
			continue
		}
		ok := map[string]bool{}
		for _, d := range ds {
			if v, in := want[d.ID]; in && d.Active >= v {
				ok[d.ID] = true
			}
		}
		if len(ok) == len(want) || time.Now().After(deadline) {
			return ok, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
