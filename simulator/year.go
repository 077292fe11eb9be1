package simulator

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/clock"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// YearConfig configures the long-absence scenario: a fleet lives through
// a year and more of rotations on a simulated clock while part of it is
// switched off, then the absent devices return and must converge with no
// operator action.
type YearConfig struct {
	// Devices in the fleet; required.
	Devices int
	// Offline devices leave and return OfflineDays later; half leave just
	// after the first identity rotation (they come back within the
	// policy's window after expiry and renew with their old key), half
	// later (they come back past every window and re-enrol with their
	// birth credential). 0 means 30% of Devices.
	Offline     int
	OfflineDays int // 0 means 400
	// What the fleet goes through meanwhile; zero values take 4, 2, 3
	// and 1.
	IdentityRotations    int
	AnchorRotations      int // CA root and update key, each time
	DataKeyVersions      int // new data-key versions after the first
	FirmwareKeyRotations int // each followed by a firmware release signed with the new key
	// DayDelay is the real time one quiet simulated day takes; 0 means
	// 20 ms. Events hold the clock until the devices online converge.
	DayDelay time.Duration
	// Timeout bounds the wait for convergence after each event and at the
	// end; 0 means 2 minutes.
	Timeout time.Duration
	// Dir is the work directory; empty means a temporary one.
	Dir string
	// Progress receives one line per event; nil means none.
	Progress io.Writer
	// Logger for fleetd and the agents; nil discards.
	Logger *slog.Logger
}

// YearReport is the outcome of a long-absence run.
type YearReport struct {
	Devices              int     `json:"devices"`
	Offline              int     `json:"offline"`
	OfflineDays          int     `json:"offline_days"`
	SimulatedDays        int     `json:"simulated_days"`
	IdentityRotations    int     `json:"identity_rotations"`
	AnchorRotations      int     `json:"anchor_rotations"`
	DataKeyVersions      int     `json:"data_key_versions"`
	FirmwareKeyRotations int     `json:"firmware_key_rotations"`
	ElapsedSeconds       float64 `json:"elapsed_s"`

	// Current is what every device should report at the end.
	Current struct {
		Anchors  uint32 `json:"anchors"`
		DataKey  uint32 `json:"data_key_primary"`
		Firmware uint32 `json:"firmware"`
	} `json:"current"`
	// Converged devices report the current versions of everything; the
	// rest are Bricked (listed, up to 20, in BrickedIDs).
	Converged  int      `json:"converged"`
	Bricked    int      `json:"bricked"`
	BrickedIDs []string `json:"bricked_ids,omitempty"`
	// How the absent devices came back.
	RenewedAfterExpiry uint64 `json:"renewed_after_expiry"`
	Reenrolled         uint64 `json:"reenrolled_idevid"`
	ReenrolledDevices  int    `json:"reenrolled_devices"`
	// PolicyRenewals are rotations fleetd opened on its own, before or
	// after expiry, besides the operator's.
	PolicyRenewals uint64            `json:"policy_renewals"`
	AnchorWalks    uint64            `json:"anchor_walks"`
	DataKeysSent   uint64            `json:"data_keys_sent"`
	HSMOps         uint64            `json:"hsm_ops"`
	Rejected       map[string]uint64 `json:"rejected,omitempty"`
	BrokerDenials  map[string]uint64 `json:"broker_denials,omitempty"`
	Events         []string          `json:"events"`
	AuditRecords   uint64            `json:"audit_records"`
	AuditOK        bool              `json:"audit_ok"`
	AuditError     string            `json:"audit_error,omitempty"`
}

// Firmware identity of the simulated devices.
var (
	simVendor = firmware.UUID{0x6b, 0x66, 0x2d, 0x76, 0x65, 0x6e, 0x64, 0x6f, 0x72, 0, 0, 0, 0, 0, 0, 1}
	simClass  = firmware.UUID{0x6b, 0x66, 0x2d, 0x63, 0x6c, 0x61, 0x73, 0x73, 0, 0, 0, 0, 0, 0, 0, 1}
)

type yearEvent struct {
	day  int
	name string
	run  func(ctx context.Context) error
	// settled reports how many online devices caught up with the event.
	settled func() int
}

type yearFleet struct {
	cfg    YearConfig
	clk    *clock.Sim
	srv    *server.Server
	admin  *client.Client
	ids    []string
	dir    string
	images sync.Map // uri -> image

	start   time.Time // day 0
	mu      sync.Mutex
	agents  map[string]*yearAgent
	offline map[string]bool
	reenrol map[string]bool
	walks   atomic.Uint64
	logf    func(format string, args ...any)
}

type yearAgent struct {
	a      *device.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

// RunYear runs the long-absence scenario and returns its report. Devices
// that do not converge are reported as bricked; that is a result, not an
// error.
func RunYear(ctx context.Context, cfg YearConfig) (*YearReport, error) {
	start := time.Now()
	if cfg.Devices <= 0 {
		return nil, errors.New("simulator: year: devices must be positive")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.Offline, cfg.Devices*3/10)
	def(&cfg.OfflineDays, 400)
	def(&cfg.IdentityRotations, 4)
	def(&cfg.AnchorRotations, 2)
	def(&cfg.DataKeyVersions, 3)
	def(&cfg.FirmwareKeyRotations, 1)
	if cfg.Offline > cfg.Devices || cfg.Offline < 0 {
		return nil, fmt.Errorf("simulator: year: %d offline of %d devices", cfg.Offline, cfg.Devices)
	}
	if cfg.DayDelay == 0 {
		cfg.DayDelay = 20 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := raiseFileLimit(cfg.Devices*fdsPerDevice + 256); err != nil {
		return nil, err
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-year-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	y := &yearFleet{cfg: cfg, clk: clock.NewSim(time.Now()), dir: dir, agents: map[string]*yearAgent{},
		offline: map[string]bool{}, reenrol: map[string]bool{}}
	y.logf = func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "day %3d  %s\n", y.day(), fmt.Sprintf(format, args...))
		}
	}
	y.start = y.clk.Now()
	if err := y.startServer(ctx); err != nil {
		return nil, err
	}
	defer y.srv.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		y.stopAll()
	}()

	run := protocol.NewID()[:2]
	for i := 0; i < cfg.Devices; i++ {
		y.ids = append(y.ids, fmt.Sprintf("y%x-%05d", run, i))
	}
	if err := y.provision(ctx); err != nil {
		return nil, err
	}
	for _, id := range y.ids {
		if err := y.startAgent(ctx, id); err != nil {
			return nil, err
		}
	}
	y.logf("%d devices provisioned (birth credential, identity v1, anchors v1) and online", len(y.ids))

	// Who leaves when: group A right after the first identity rotation,
	// group B 85 days later. With the scenario's policy (certificates for
	// 180 days, renewal up to 300 days after expiry) A returns inside the
	// window and B past it.
	offA, offB := y.ids[:cfg.Offline/2], y.ids[cfg.Offline/2:cfg.Offline]
	events, last := y.timeline(offA, offB)
	rep := &YearReport{Devices: cfg.Devices, Offline: cfg.Offline, OfflineDays: cfg.OfflineDays,
		IdentityRotations: cfg.IdentityRotations, AnchorRotations: cfg.AnchorRotations,
		DataKeyVersions: cfg.DataKeyVersions, FirmwareKeyRotations: cfg.FirmwareKeyRotations}
	ei := 0
	for day := 0; day <= last; day++ {
		y.clk.Set(y.start.Add(time.Duration(day) * policy.Day))
		busy := false
		for ei < len(events) && events[ei].day == day {
			ev := events[ei]
			ei++
			busy = true
			t0 := time.Now()
			if err := ev.run(ctx); err != nil {
				return nil, fmt.Errorf("simulator: year: day %d, %s: %w", day, ev.name, err)
			}
			n, want, err := y.settle(ctx, ev.settled)
			if err != nil {
				return nil, err
			}
			line := fmt.Sprintf("%-34s %d/%d online devices caught up in %.1fs", ev.name, n, want, time.Since(t0).Seconds())
			y.logf("%s", line)
			rep.Events = append(rep.Events, fmt.Sprintf("day %d: %s", day, line))
		}
		if !busy {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(cfg.DayDelay):
			}
		}
	}
	rep.SimulatedDays = last
	y.finish(ctx, rep)
	rep.ElapsedSeconds = time.Since(start).Seconds()
	return rep, nil
}

func (y *yearFleet) day() int { return int(y.clk.Now().Sub(y.start) / policy.Day) }

// yearPolicy is the scenario's policy: certificates for 180 days,
// renewed in their last third, superseded identities accepted for 7 days,
// renewal with the old key up to 300 days after expiry, two data-key
// versions kept for decryption.
func yearPolicy() policy.Policy {
	return policy.Policy{CertValidity: policy.Duration(180 * policy.Day), RenewBefore: 1.0 / 3,
		Grace: policy.Duration(7 * policy.Day), RenewAfterExpiry: policy.Duration(300 * policy.Day),
		DataKeysDecrypt: 2, DataKeyDestroyAfter: policy.Duration(365 * policy.Day)}.WithDefaults()
}

func (y *yearFleet) startServer(ctx context.Context) error {
	srv, c, err := startInProcess(ctx, y.dir, y.cfg.Logger, func(c *server.Config) {
		c.Now, c.Policy = y.clk.Now, yearPolicy()
		// A simulated day passes in milliseconds: commands and uplinks
		// must stay fresh across the few days a message may spend in
		// flight, and the online key must not lapse between fleetd's
		// once-a-second checks (a second is up to 50 simulated days).
		c.CommandTTL, c.OnlineKeyLifetime = 30*policy.Day, 1000*policy.Day
	}, y.clk.Now) // fleetd renews its certificate on the simulated clock
	if err != nil {
		return err
	}
	y.srv, y.admin = srv, c
	return nil
}

func (y *yearFleet) provision(ctx context.Context) error {
	return provisionAll(ctx, y.admin, y.ids, func(id string) string { return filepath.Join(y.dir, "devices", id, "keys") }, 16, nil)
}

func (y *yearFleet) startAgent(ctx context.Context, id string) error {
	actx, cancel := context.WithCancel(ctx)
	a, err := device.New(device.Options{
		Dir: filepath.Join(y.dir, "devices", id, "keys"), Logger: y.cfg.Logger, Now: y.clk.Now, NoSync: true,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second,
		// A real second is 50 simulated days: a report a second lands
		// inside each certificate's 60-day renewal window, as a real
		// device's hourly report does, without flooding fleetd.
		ReportEvery: time.Second, StepTimeout: 2 * time.Second, ReenrollAfter: 2 * time.Second,
		Firmware: &device.FirmwareOptions{Dir: filepath.Join(y.dir, "devices", id, "firmware"),
			Identity: firmware.Identity{VendorID: simVendor, ClassID: simClass, FactoryVersion: 1},
			Fetch:    y.fetch},
		OnEvent: y.onEvent,
	})
	if err != nil {
		cancel()
		return err
	}
	r := &yearAgent{a: a, cancel: cancel, done: make(chan struct{})}
	y.mu.Lock()
	y.agents[id] = r
	y.mu.Unlock()
	go func() {
		defer close(r.done)
		_ = a.Run(actx)
	}()
	return nil
}

func (y *yearFleet) onEvent(e device.Event) {
	switch e.Kind {
	case device.EventAnchors:
		y.walks.Add(1)
	case device.EventReenrolled:
		y.mu.Lock()
		y.reenrol[e.Device] = true
		y.mu.Unlock()
	}
}

// fetch is the simulated devices' image download.
func (y *yearFleet) fetch(_ context.Context, uri string) ([]byte, error) {
	v, ok := y.images.Load(uri)
	if !ok {
		return nil, fmt.Errorf("no image at %s", uri)
	}
	return v.([]byte), nil
}

func (y *yearFleet) stopAgent(id string) {
	y.mu.Lock()
	r := y.agents[id]
	delete(y.agents, id)
	y.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

func (y *yearFleet) stopAll() {
	y.mu.Lock()
	ids := make([]string, 0, len(y.agents))
	for id := range y.agents {
		ids = append(ids, id)
	}
	y.mu.Unlock()
	for _, id := range ids {
		y.stopAgent(id)
	}
}

// online returns the agents running now.
func (y *yearFleet) online() map[string]*device.Agent {
	y.mu.Lock()
	defer y.mu.Unlock()
	out := make(map[string]*device.Agent, len(y.agents))
	for id, r := range y.agents {
		out[id] = r.a
	}
	return out
}

// settle holds the clock until settled() reaches every online device or
// the timeout passes.
func (y *yearFleet) settle(ctx context.Context, settled func() int) (int, int, error) {
	want := len(y.online())
	if settled == nil {
		return want, want, nil
	}
	deadline := time.Now().Add(y.cfg.Timeout)
	for {
		n := settled()
		if n >= want || time.Now().After(deadline) {
			return n, want, nil
		}
		select {
		case <-ctx.Done():
			return n, want, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// identitySettled counts online devices whose latest identity version is
// active and reported.
func (y *yearFleet) identitySettled() int {
	n := 0
	for id := range y.online() {
		if identityCurrent(y.device(id)) {
			n++
		}
	}
	return n
}

func identityCurrent(d *store.Device) bool {
	if d == nil || d.Revoked {
		return false
	}
	s := d.Slot(protocol.SlotIdentity)
	l := s.Latest()
	return l != nil && l.State == lifecycle.StateActive && s.Reported == l.Version
}

func (y *yearFleet) device(id string) *store.Device {
	d, err := y.srv.Store().GetDevice(context.Background(), id)
	if err != nil {
		return nil
	}
	return d
}

func (y *yearFleet) anchorsSettled() int {
	cur := y.anchorVersion()
	n := 0
	for _, a := range y.online() {
		if a.AnchorVersion() == cur {
			n++
		}
	}
	return n
}

func (y *yearFleet) anchorVersion() uint32 {
	info, err := y.srv.Trust().Info()
	if err != nil {
		return 0
	}
	return info.Version
}

func (y *yearFleet) dataKeysSettled() int {
	n := 0
	for id, a := range y.online() {
		if dataKeysCurrent(y.device(id), a.DataKeys()) {
			n++
		}
	}
	return n
}

// dataKeysCurrent: the device holds exactly the live escrowed versions,
// with the same primary.
func dataKeysCurrent(d *store.Device, ks *datakey.Keyset) bool {
	if d == nil {
		return false
	}
	var want, have []uint32
	var primary uint32
	for _, k := range d.DataKeys {
		switch k.Status {
		case store.DataKeyPrimary:
			primary = k.Version
			want = append(want, k.Version)
		case store.DataKeyDecryptOnly:
			want = append(want, k.Version)
		}
	}
	for _, v := range ks.Versions() {
		if v.Status == datakey.Primary || v.Status == datakey.DecryptOnly {
			have = append(have, v.Version)
		}
	}
	sort.Slice(have, func(i, j int) bool { return have[i] < have[j] })
	return primary != 0 && ks.PrimaryVersion() == primary && slices.Equal(want, have)
}

func (y *yearFleet) firmwareSettled() int {
	cur, _ := y.srv.Releases().CurrentFirmware()
	n := 0
	for _, a := range y.online() {
		if a.FirmwareVersion() == cur {
			n++
		}
	}
	return n
}

// timeline lays out the scenario's events and returns them, ordered, with
// the last day.
func (y *yearFleet) timeline(offA, offB []string) ([]yearEvent, int) {
	cfg := y.cfg
	var evs []yearEvent
	add := func(day int, name string, run func(context.Context) error, settled func() int) {
		evs = append(evs, yearEvent{day: day, name: name, run: run, settled: settled})
	}
	fwVersion := uint32(1)
	release := func(ctx context.Context) error {
		fwVersion++
		img := make([]byte, 1024)
		copy(img, fmt.Sprintf("keyfleet simulated firmware %d", fwVersion))
		uri := fmt.Sprintf("sim://firmware/%d", fwVersion)
		y.images.Store(uri, img)
		d := sha256.Sum256(img)
		_, err := y.admin.PublishFirmware(ctx, adminapi.FirmwareRequest{Vendor: simVendor.String(), Class: simClass.String(),
			Version: fwVersion, Digest: d[:], Size: uint64(len(img)), URI: uri})
		return err
	}
	dataKeys := func(ctx context.Context) error {
		r, err := y.admin.RotateDataKeys(ctx)
		if err == nil && r.Failed > 0 {
			err = fmt.Errorf("%d devices got no data key: %v", r.Failed, r.Errors)
		}
		return err
	}
	rotateAll := func(ctx context.Context) error {
		_, err := y.admin.Rotate(ctx, adminapi.RotateRequest{All: true})
		return err
	}
	anchors := func(keys ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := y.admin.RotateAnchors(ctx, keys)
			return err
		}
	}
	leave := func(ids []string) func(context.Context) error {
		return func(context.Context) error {
			for _, id := range ids {
				y.stopAgent(id)
			}
			y.mu.Lock()
			for _, id := range ids {
				y.offline[id] = true
			}
			y.mu.Unlock()
			return nil
		}
	}
	back := func(ids []string) func(context.Context) error {
		return func(ctx context.Context) error {
			for _, id := range ids {
				if err := y.startAgent(ctx, id); err != nil {
					return err
				}
			}
			return nil
		}
	}
	// Day 0-2: the first data key and firmware release.
	add(1, "data keys v1", dataKeys, y.dataKeysSettled)
	add(2, "firmware v2 released", release, y.firmwareSettled)
	// Identity rotations every 90 days from day 10.
	for k := 0; k < cfg.IdentityRotations; k++ {
		add(10+90*k, fmt.Sprintf("identity rotation %d", k+1), rotateAll, y.identitySettled)
	}
	add(12, fmt.Sprintf("%d devices switched off (group A)", len(offA)), leave(offA), nil)
	add(95, fmt.Sprintf("%d devices switched off (group B)", len(offB)), leave(offB), nil)
	// The rest happens while both groups are away: days 100 to 300.
	for k := 0; k < cfg.DataKeyVersions; k++ {
		add(120+170*k/max(cfg.DataKeyVersions, 1), fmt.Sprintf("data keys v%d", k+2), dataKeys, y.dataKeysSettled)
	}
	for k := 0; k < cfg.AnchorRotations; k++ {
		add(150+80*k, fmt.Sprintf("anchors rotated (CA root, update key) #%d", k+1), anchors("ca", "update"), y.anchorsSettled)
	}
	for k := 0; k < cfg.FirmwareKeyRotations; k++ {
		day := 250 + 20*k
		add(day, fmt.Sprintf("firmware key rotated #%d", k+1), anchors("firmware"), y.anchorsSettled)
		add(day+5, fmt.Sprintf("firmware v%d released (new key)", k+3), release, y.firmwareSettled)
	}
	retA, retB := 12+cfg.OfflineDays, 95+cfg.OfflineDays
	add(retA, fmt.Sprintf("%d devices back (group A)", len(offA)), back(offA), y.allSettled)
	add(retB, fmt.Sprintf("%d devices back (group B)", len(offB)), back(offB), y.allSettled)
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].day < evs[j].day })
	return evs, retB + 5
}

// allSettled counts online devices that report the current version of
// everything.
func (y *yearFleet) allSettled() int {
	n := 0
	for id, a := range y.online() {
		if y.converged(id, a) {
			n++
		}
	}
	return n
}

func (y *yearFleet) converged(id string, a *device.Agent) bool {
	d := y.device(id)
	fw, _ := y.srv.Releases().CurrentFirmware()
	cur := y.anchorVersion()
	return identityCurrent(d) && d.Anchors == cur && a.AnchorVersion() == cur &&
		dataKeysCurrent(d, a.DataKeys()) && a.FirmwareVersion() == fw && d.Firmware == fw
}

// finish waits for every device to converge, then fills the report.
func (y *yearFleet) finish(ctx context.Context, rep *YearReport) {
	deadline := time.Now().Add(y.cfg.Timeout)
	for y.allSettled() < len(y.ids) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	online := y.online()
	for _, id := range y.ids {
		if a, ok := online[id]; ok && y.converged(id, a) {
			rep.Converged++
			continue
		}
		rep.Bricked++
		if len(rep.BrickedIDs) < 20 {
			rep.BrickedIDs = append(rep.BrickedIDs, id)
		}
	}
	st := y.srv.Engine().Stats()
	rep.RenewedAfterExpiry, rep.Reenrolled = st.RenewedExpired, st.Reenrolled
	rep.DataKeysSent = st.DataKeysSent
	rep.Rejected = st.Rejected
	rep.HSMOps = y.srv.HSMOps()
	rep.AnchorWalks = y.walks.Load()
	y.mu.Lock()
	rep.ReenrolledDevices = len(y.reenrol)
	y.mu.Unlock()
	if s, err := y.admin.Status(ctx); err == nil {
		rep.BrokerDenials = s.BrokerDenials
	}
	_ = y.srv.Store().ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Action == "requested" && r.Actor == "policy" {
			rep.PolicyRenewals++
		}
		return nil
	})
	n, err := y.srv.Store().VerifyAudit(ctx)
	rep.AuditRecords, rep.AuditOK = n, err == nil
	if err != nil {
		rep.AuditError = err.Error()
	}
	rep.Current.Anchors = y.anchorVersion()
	rep.Current.Firmware, _ = y.srv.Releases().CurrentFirmware()
	if d := y.device(y.ids[0]); d != nil && len(d.DataKeys) > 0 {
		rep.Current.DataKey = d.DataKeys[len(d.DataKeys)-1].Version
	}
}

// WriteTable prints the report for people.
func (r *YearReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "devices                 %d (%d offline for %d days)\n", r.Devices, r.Offline, r.OfflineDays)
	fmt.Fprintf(w, "simulated               %d days in %.1f s\n", r.SimulatedDays, r.ElapsedSeconds)
	fmt.Fprintf(w, "fleet went through      %d identity rotations, %d anchor rotations, %d data-key versions, %d firmware-key rotations\n",
		r.IdentityRotations, r.AnchorRotations, r.DataKeyVersions, r.FirmwareKeyRotations)
	fmt.Fprintf(w, "current                 anchors v%d, data key v%d, firmware v%d\n", r.Current.Anchors, r.Current.DataKey, r.Current.Firmware)
	fmt.Fprintf(w, "converged               %d\n", r.Converged)
	fmt.Fprintf(w, "bricked                 %d %v\n", r.Bricked, r.BrickedIDs)
	fmt.Fprintf(w, "renewed after expiry    %d (old key, within the window)\n", r.RenewedAfterExpiry)
	fmt.Fprintf(w, "re-enrolled (IDevID)    %d devices\n", r.ReenrolledDevices)
	fmt.Fprintf(w, "policy renewals         %d\n", r.PolicyRenewals)
	fmt.Fprintf(w, "anchor walks            %d\n", r.AnchorWalks)
	fmt.Fprintf(w, "audit                   %d records, chain ok: %v\n", r.AuditRecords, r.AuditOK)
	for _, e := range r.Events {
		fmt.Fprintf(w, "  %s\n", e)
	}
	return nil
}
