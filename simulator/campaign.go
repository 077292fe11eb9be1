package simulator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/progress"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
)

// canaryFault is the fault campaign mode injects into a canary cohort:
// the agents it names ignore every downlink (a firmware build that cannot
// read fleetd's messages), so fleetd's rotate never takes effect and the
// rotation times out while they are connected, which fleetd counts as a
// failure. It is a device.Options.Link, which only a program that embeds
// the agent can set: fleet-agent's command line cannot reach it.
type canaryFault struct {
	mu  sync.RWMutex
	ids map[string]bool
}

func (c *canaryFault) set(ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ids = map[string]bool{}
	for _, id := range ids {
		c.ids[id] = true
	}
}

func (c *canaryFault) failing(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ids[id]
}

// wrap returns id's Link: downlinks dropped while id is failing, the rest
// passed to inner (the message faults), if any.
func (c *canaryFault) wrap(id string, inner func(string, []byte) [][]byte) func(string, []byte) [][]byte {
	return func(dir string, b []byte) [][]byte {
		if dir == "down" && c.failing(id) {
			return nil
		}
		if inner != nil {
			return inner(dir, b)
		}
		return [][]byte{b}
	}
}

// phase is one of a campaign-mode run's campaigns (see CampaignMode).
type phase struct {
	name   string
	away   bool
	canary bool
	kill   bool
}

// Names of the phases in the report.
const (
	PhaseCampaign = "campaign"
	PhaseCanary   = "canary-failure"
	PhaseRerun    = "rerun"
)

func (m *CampaignMode) phases(kills int) ([]phase, error) {
	var out []phase
	if m.Away > 0 || m.CanaryFail == 0 {
		out = append(out, phase{name: PhaseCampaign, away: m.Away > 0})
	}
	if m.CanaryFail > 0 {
		out = append(out, phase{name: PhaseCanary, canary: true})
	}
	if m.Rerun {
		out = append(out, phase{name: PhaseRerun})
	}
	if kills > 0 {
		i := len(out) - 1
		for i >= 0 && out[i].canary {
			i--
		}
		if i < 0 {
			return nil, errors.New("campaign: --kill-fleetd needs a campaign that completes (without --canary-fail, or with --rerun)")
		}
		out[i].kill = true
	}
	return out, nil
}

// campaigner runs campaign mode over a started fleet.
type campaigner struct {
	f     *fleet
	c     *client.Client
	m     CampaignMode
	rep   *CampaignReport
	bank  *metricsBank
	ours  map[string]bool
	kills int             // left to do
	lat   []time.Duration // time-to-rotate of each activation seen
	// excluded devices are left out of later checks: revoked ones.
	excluded map[string]bool
	mu       sync.Mutex // guards rep.Problems
}

// problem records an expectation the run did not meet.
func (r *campaigner) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.rep.Problems = append(r.rep.Problems, msg)
	r.mu.Unlock()
	r.f.cfg.Logger.Warn("campaign problem", "problem", msg)
}

// runCampaigns runs campaign mode and fills rep.Campaign and the rotation
// figures of rep.
func (f *fleet) runCampaigns(ctx context.Context, c *client.Client, m CampaignMode, opsAddr string, rep *Report) error {
	phases, err := m.phases(f.cfg.Faults.FleetdKills)
	if err != nil {
		return err
	}
	cr := &CampaignReport{Stages: m.Stages, MaxFailure: float64(m.MaxFailure), MinReached: m.MinReached, RatePerMin: int(m.Rate),
		DeviceTimeoutS: m.DeviceTimeout.Seconds(), Runs: []CampaignRun{}, Problems: []string{}, VersionsIssuedTwice: []string{}}
	rep.Campaign = cr
	r := &campaigner{f: f, c: c, m: m, rep: cr, bank: &metricsBank{addr: opsAddr, banked: map[string]*histogram{}},
		ours: map[string]bool{}, kills: f.cfg.Faults.FleetdKills, excluded: map[string]bool{}}
	for _, id := range f.ids {
		r.ours[id] = true
	}
	for _, ph := range phases {
		run, err := r.run(ctx, ph)
		if err != nil {
			return err
		}
		cr.Runs = append(cr.Runs, *run)
		if ph.canary && !run.RolledBack && m.Rerun {
			break // nothing to rerun after
		}
	}
	if m.Revoke > 0 {
		if err := r.revoke(ctx); err != nil {
			return err
		}
	}
	if err := r.audit(ctx); err != nil {
		return err
	}
	if opsAddr != "" {
		hs, err := r.bank.total(ctx)
		if err != nil {
			r.problem("metrics not read: %v", err)
		} else {
			rv, rc := hs[metricRevocation], hs[metricRecovery]
			cr.M5Revocations, cr.M5RevocationP99S = rv.Count, nanToZero(rv.quantile(0.99))
			cr.M10Recoveries, cr.M10RecoveryP99S = rc.Count, nanToZero(rc.quantile(0.99))
			cr.M10RecoveryP50S = nanToZero(rc.quantile(0.50))
			if rc.Count > 0 {
				cr.M10RecoveryMeanS = rc.Sum / float64(rc.Count)
			}
		}
	} else {
		r.problem("no ops listener: M5 and M10 not read (give --server-ops with --server)")
	}
	rep.fillLatency(r.lat)
	for _, run := range cr.Runs {
		for _, s := range run.StageReports {
			rep.RotationsCompleted += s.Succeeded
			if run.Name != PhaseCanary {
				rep.RotationsFailed += s.Failed
			}
		}
	}
	return nil
}

func nanToZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// selection returns the devices a campaign will select, in its order (the
// store's, as the admin API lists them).
func (r *campaigner) selection(ctx context.Context) ([]string, error) {
	ds, err := r.c.SelectDevices(ctx, r.m.Select)
	if err != nil {
		return nil, fmt.Errorf("simulator: campaign selection: %w", err)
	}
	var out []string
	for _, d := range ds {
		if !d.Revoked {
			out = append(out, d.ID)
		}
	}
	return out, nil
}

// spread picks n of ids evenly, ours only and not excluded.
func (r *campaigner) spread(ids []string, frac float64) []string {
	var cand []string
	for _, id := range ids {
		if r.ours[id] && !r.excluded[id] {
			cand = append(cand, id)
		}
	}
	n := int(frac*float64(len(cand)) + 0.5)
	if frac > 0 && n == 0 && len(cand) > 0 {
		n = 1
	}
	out := make([]string, 0, n)
	for j := range n {
		out = append(out, cand[j*len(cand)/n])
	}
	return out
}

// run runs one campaign of the mode.
func (r *campaigner) run(ctx context.Context, ph phase) (*CampaignRun, error) {
	f := r.f
	sel, err := r.selection(ctx)
	if err != nil {
		return nil, err
	}
	if len(sel) == 0 {
		return nil, errors.New("simulator: the campaign's selector selects no device")
	}
	// The campaign takes the devices in the store's order; its first
	// stage begins at its first tick, so the faults of the first stages
	// are in place before it is created. Its own device list is checked
	// against this right after.
	targets := campaign.Targets(&store.Campaign{Stages: r.m.Stages, Devices: make([]store.CampaignDevice, len(sel))})
	stageOf := map[string]int{}
	for i, id := range sel {
		stageOf[id] = sort.SearchInts(targets, i+1)
	}
	run := &CampaignRun{Name: ph.name, Devices: len(sel), AwayNotConverged: []string{}}
	var canary []string
	if ph.canary {
		canary = r.spread(sel[:targets[0]], float64(r.m.CanaryFail))
		f.canary.set(canary)
		run.InjectedFailures = len(canary)
	}
	awayBy := map[int][]string{}
	var awayAll []string
	if ph.away {
		awayAll = r.spread(sel, float64(r.m.Away))
		for _, id := range awayAll {
			awayBy[stageOf[id]] = append(awayBy[stageOf[id]], id)
		}
		run.AwayDevices = len(awayAll)
	}
	away := &awayState{left: map[string]time.Time{}, back: map[string]time.Time{}}
	r.goAway(ctx, away, append(awayBy[0], awayBy[1]...))

	timeout := r.m.DeviceTimeout
	if ph.kill {
		timeout = r.m.KillDeviceTimeout
	}
	run.DeviceTimeoutS = timeout.Seconds()
	t0 := time.Now()
	camp, err := r.c.CreateCampaign(ctx, r.m.request(timeout))
	if err != nil {
		return nil, fmt.Errorf("simulator: create campaign: %w", err)
	}
	run.ID = camp.ID
	f.cfg.Logger.Info("campaign created", "campaign", camp.ID, "phase", ph.name, "devices", len(sel))
	if full, err := r.c.Campaign(ctx, camp.ID, true); err == nil {
		moved := 0
		for _, d := range full.Devices {
			if s, ok := stageOf[d.ID]; !ok || s != d.Stage {
				moved++
			}
		}
		if moved > 0 || len(full.Devices) != len(sel) {
			r.problem("campaign %s: %d devices in another stage than the selection's order predicted; faults may have come late", camp.ID, moved)
		}
	}

	// Follow it stage by stage.
	deadline := time.Now().Add(r.followTimeout(len(sel), timeout))
	cur, stageAt := 0, t0
	bar := r.stageBar(camp, 0)
	var last adminapi.Campaign
	for {
		c, err := r.c.Campaign(ctx, camp.ID, false)
		if err == nil {
			last = c
			for cur < c.Stage { // stages passed since the last look
				run.StageReports = append(run.StageReports, stageReport(c, cur, time.Since(stageAt)))
				bar.Set(c.StageProgress[cur].Devices)
				bar.Finish()
				cur++
				stageAt = time.Now()
				bar = r.stageBar(c, cur)
				r.goAway(ctx, away, awayBy[cur+1])
			}
			p := c.StageProgress[cur]
			bar.Set(p.Succeeded + p.Failed + p.Away + p.Cancelled)
			if c.State != adminapi.CampaignStateRunning {
				run.StageReports = append(run.StageReports, stageReport(c, cur, time.Since(stageAt)))
				bar.Finish()
				break
			}
			if ph.kill && r.kills > 0 && cur >= min(1, len(c.Stages)-1) && p.Succeeded > 0 && p.Pending > r.killMargin() {
				r.kill(ctx, run, camp.ID)
			}
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			r.problem("campaign %s (%s) still %s in stage %d after %v", camp.ID, ph.name, last.State, last.Stage+1, r.followTimeout(len(sel), timeout))
			bar.Finish()
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(r.pollEvery(len(sel))):
		}
	}
	run.DurationS = time.Since(t0).Seconds()
	run.State, run.Reason = last.State, last.Reason
	f.cfg.Logger.Info("campaign ended", "campaign", camp.ID, "state", last.State, "reason", last.Reason)

	if ph.canary {
		run.SelfPaused = last.State == adminapi.CampaignStatePaused && strings.Contains(last.Reason, "paused itself")
		if run.SelfPaused {
			run.PausedInStage, run.PausedAfterS = last.Stage+1, run.DurationS
		}
		if !run.SelfPaused || last.Stage != 0 {
			r.problem("campaign %s with a failing canary: %s in stage %d (%s), want paused by itself in stage 1",
				camp.ID, last.State, last.Stage+1, last.Reason)
		}
		if r.m.Rollback && last.State == adminapi.CampaignStatePaused {
			if err := r.rollback(ctx, run); err != nil {
				return nil, err
			}
		}
		f.canary.set(nil)
	} else if last.State != adminapi.CampaignStateCompleted {
		r.problem("campaign %s (%s) ended %s (%s), want completed", camp.ID, ph.name, last.State, last.Reason)
	}
	if ph.away {
		if err := r.converge(ctx, run, away, awayAll); err != nil {
			return nil, err
		}
	}
	if final, err := r.c.Campaign(ctx, camp.ID, true); err == nil {
		for _, d := range final.Devices {
			if d.Status == "failed" && ph.name != PhaseCanary {
				run.FailedDevices = append(run.FailedDevices, d.ID)
			}
		}
	}
	f.mu.Lock()
	for _, mk := range f.activated {
		if mk.at.After(t0) && mk.took > 0 {
			r.lat = append(r.lat, mk.took)
		}
	}
	f.mu.Unlock()
	return run, nil
}

// pollEvery is how often a campaign of n devices is read: every read
// decodes its whole record in fleetd, so a large one is read less often
// (stage times are as precise as this).
func (r *campaigner) pollEvery(n int) time.Duration {
	return min(time.Second, max(200*time.Millisecond, time.Duration(n)*100*time.Microsecond))
}

// killMargin is how many devices of a stage must still wait for their
// start when fleetd is killed, so that its stage cannot complete before the
// restarted fleetd is asked where it stands: fleetd starts at most a
// second's worth of the rate per tick, and one tick may pass before the
// kill and one after the restart. Without a rate, any device will do.
func (r *campaigner) killMargin() int {
	if r.m.Rate == 0 {
		return 0
	}
	return 2 * max(1, int(r.m.Rate)/60)
}

// followTimeout bounds one campaign: the round timeout plus the time the
// rate needs.
func (r *campaigner) followTimeout(devices int, deviceTimeout time.Duration) time.Duration {
	t := r.f.cfg.RoundTimeout + 2*deviceTimeout
	if r.m.Rate > 0 {
		t += time.Duration(float64(devices)/float64(r.m.Rate)*float64(time.Minute)) * 3 / 2
	}
	return t
}

func (r *campaigner) stageBar(c adminapi.Campaign, stage int) *progress.Bar {
	return progress.New(r.f.cfg.Progress, c.StageProgress[stage].Devices,
		fmt.Sprintf("%s stage %d/%d (%s)", c.ID, stage+1, len(c.Stages), pct(c.Stages[stage])), progress.Options{Unit: "dev"})
}

func pct(f float64) string { return fmt.Sprintf("%g%%", math.Round(f*1e5)/1e3) }

func stageReport(c adminapi.Campaign, stage int, took time.Duration) StageReport {
	p := c.StageProgress[stage]
	s := StageReport{Stage: stage + 1, Fraction: c.Stages[stage], Devices: p.Devices, DurationS: took.Seconds(),
		Succeeded: p.Succeeded, Failed: p.Failed, Away: p.Away, Cancelled: p.Cancelled, Pending: p.Pending, InProgress: p.InProgress}
	if n := p.Succeeded + p.Failed; n > 0 {
		s.FailureRatio = float64(p.Failed) / float64(n)
	}
	return s
}

// awayState records when away devices left and came back.
type awayState struct {
	mu   sync.Mutex
	left map[string]time.Time
	back map[string]time.Time
}

// goAway stops the agents of ids, all at once, and waits (briefly) until
// the broker has let their sessions go, so that the campaign finds them
// away. With AwayFor they return after it.
func (r *campaigner) goAway(ctx context.Context, a *awayState, ids []string) {
	if len(ids) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); r.f.stopAgent(id) }()
	}
	wg.Wait()
	now := time.Now()
	a.mu.Lock()
	for _, id := range ids {
		a.left[id] = now
	}
	a.mu.Unlock()
	r.f.faults.offlines.Add(uint64(len(ids)))
	r.waitSessions(ctx, 5*time.Second)
	if r.m.AwayFor > 0 {
		r.f.wg.Add(1)
		go func() {
			defer r.f.wg.Done()
			select {
			case <-r.f.ctx.Done():
				return
			case <-time.After(r.m.AwayFor):
			}
			r.comeBack(a, ids)
		}()
	}
}

// waitSessions waits until the broker holds no more sessions than the
// simulator runs agents (plus fleetd's own), or for at most d.
func (r *campaigner) waitSessions(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		r.f.agentsMu.Lock()
		n := len(r.f.agents)
		r.f.agentsMu.Unlock()
		if st, err := r.c.Status(ctx); err == nil && st.ConnectedClient <= n+1 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// comeBack starts the agents of the ids not back yet.
func (r *campaigner) comeBack(a *awayState, ids []string) {
	for _, id := range ids {
		a.mu.Lock()
		_, done := a.back[id]
		if !done {
			a.back[id] = time.Now()
		}
		a.mu.Unlock()
		if done {
			continue
		}
		if err := r.f.startAgent(id, false); err != nil {
			r.problem("device %s did not come back: %v", id, err)
		}
	}
}

// converge brings the away devices back, if they are not yet, and waits
// until the campaign reports each of them finished.
func (r *campaigner) converge(ctx context.Context, run *CampaignRun, a *awayState, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	r.comeBack(a, ids)
	open := map[string]bool{}
	for _, id := range ids {
		open[id] = true
	}
	var took []time.Duration
	bar := r.f.bar(len(ids), run.ID+" away devices converging")
	deadline := time.Now().Add(r.f.cfg.RoundTimeout)
	for len(open) > 0 && time.Now().Before(deadline) {
		c, err := r.c.Campaign(ctx, run.ID, true)
		if err == nil {
			now := time.Now()
			for _, d := range c.Devices {
				if !open[d.ID] || (d.Status != "succeeded" && d.Status != "failed") {
					continue
				}
				delete(open, d.ID)
				if d.Status == "succeeded" {
					run.AwayConverged++
				} else {
					run.AwayFailed++
				}
				a.mu.Lock()
				took = append(took, now.Sub(a.back[d.ID]))
				a.mu.Unlock()
			}
			bar.Set(len(ids) - len(open))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * r.pollEvery(len(ids)*10)):
		}
	}
	bar.Finish()
	for id := range open {
		run.AwayNotConverged = append(run.AwayNotConverged, id)
	}
	sort.Strings(run.AwayNotConverged)
	slices.Sort(took)
	if len(took) > 0 {
		run.AwayConvergeP50S = took[len(took)/2].Seconds()
		run.AwayConvergeMaxS = took[len(took)-1].Seconds()
	}
	if len(open) > 0 || run.AwayFailed > 0 {
		r.problem("campaign %s: %d away devices did not converge, %d failed", run.ID, len(open), run.AwayFailed)
	}
	return nil
}

// rollback rolls back a campaign that paused itself, lifts the canary
// fault, restarts every agent and checks that each one connects
// with a credential the broker accepts and that fleetd records no open
// rotation and the active version the device reports.
func (r *campaigner) rollback(ctx context.Context, run *CampaignRun) error {
	f := r.f
	t0 := time.Now()
	rb, err := r.c.CampaignAction(ctx, run.ID, adminapi.CampaignRollback)
	if err != nil {
		return fmt.Errorf("simulator: roll back %s: %w", run.ID, err)
	}
	run.RollbackRequestS = time.Since(t0).Seconds()
	run.RolledBack = rb.State == adminapi.CampaignStateRolledBack
	run.RollbackReason = rb.Reason
	for _, p := range rb.StageProgress {
		run.RollbackCancelled += p.Cancelled
	}
	f.canary.set(nil)
	var want []string
	for _, id := range f.ids {
		if !r.excluded[id] {
			want = append(want, id)
		}
	}
	// Every agent restarts, as a device rebooted after a rollback would:
	// a new connection with the credential its keystore holds. All stop
	// first, and the broker lets their sessions go, so that no new
	// connection has to take over a session still ending.
	mark := time.Now()
	each := func(fn func(id string)) {
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		for _, id := range want {
			sem <- struct{}{}
			wg.Add(1)
			go func() { defer func() { <-sem; wg.Done() }(); fn(id) }()
		}
		wg.Wait()
	}
	each(f.stopAgent)
	r.waitSessions(ctx, 30*time.Second)
	each(func(id string) {
		if err := f.startAgent(id, false); err != nil {
			r.problem("rollback of %s: agent %s not restarted: %v", run.ID, id, err)
		}
	})
	got, err := f.waitFor(ctx, len(want), run.ID+" rollback: reconnecting", func() int {
		n := 0
		for _, id := range want {
			if !f.connectedAt[id].Before(mark) {
				n++
			}
		}
		return n
	})
	if err != nil {
		return err
	}
	f.mu.Lock()
	for _, id := range want {
		if !f.refusedAt[id].Before(mark) {
			run.RollbackRefused = append(run.RollbackRefused, id)
		}
	}
	f.mu.Unlock()
	if got < len(want) || len(run.RollbackRefused) > 0 {
		r.problem("rollback of %s: %d of %d devices reconnected, %d refused by the broker", run.ID, got, len(want), len(run.RollbackRefused))
	}
	// fleetd's view: each device's hello reported its active version and
	// no rotation is open.
	bad := r.openRotations(ctx, want, 10*time.Second)
	if len(bad) > 0 {
		r.problem("rollback of %s: %d devices not on their active credential in fleetd's records, e.g. %s", run.ID, len(bad), bad[0])
	}
	run.RollbackS = time.Since(t0).Seconds()
	run.RollbackAccepted = got - len(run.RollbackRefused)
	return nil
}

// openRotations polls fleetd for at most d until each of ids reports its
// active version and has no open rotation; it returns those that do not.
func (r *campaigner) openRotations(ctx context.Context, ids []string, d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		var bad []string
		ds, err := r.c.Devices(ctx)
		if err == nil {
			by := map[string]adminapi.DeviceSummary{}
			for _, x := range ds {
				by[x.ID] = x
			}
			for _, id := range ids {
				x := by[id]
				if x.Active == 0 || x.Reported != x.Active || x.State == "pending" || x.State == "issued" {
					bad = append(bad, id)
				}
			}
			if len(bad) == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				return ids
			}
			return bad
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kill SIGKILLs the spawned fleetd mid-campaign, reads the stage its store
// holds, starts it again and checks it resumed at that stage.
func (r *campaigner) kill(ctx context.Context, run *CampaignRun, id string) {
	sp := r.f.cfg.spawned
	r.kills--
	if err := r.bank.bank(ctx); err != nil {
		r.problem("metrics before the kill not read: %v", err)
	}
	k := KillReport{}
	t0 := time.Now()
	err := sp.restartWith(ctx, syscall.SIGKILL, func() {
		st, err := store.OpenBolt(datadir.Paths{Dir: sp.data}.Store(), store.BoltOptions{})
		if err != nil {
			r.problem("store of the killed fleetd not read: %v", err)
			return
		}
		defer st.Close()
		left, err := st.GetCampaign(ctx, id)
		if err != nil {
			r.problem("campaign %s not in the killed fleetd's store: %v", id, err)
			return
		}
		k.StageAtKill, k.StateAtKill = left.Stage+1, string(left.State)
	})
	r.f.faults.kills.Add(1)
	if err != nil {
		r.problem("fleetd did not restart after SIGKILL: %v", err)
		return
	}
	k.DowntimeS = time.Since(t0).Seconds()
	after, err := r.c.Campaign(ctx, id, false)
	if err != nil {
		r.problem("campaign %s not read after the restart: %v", id, err)
		return
	}
	k.StageAfter, k.StateAfter = after.Stage+1, after.State
	if k.StageAfter != k.StageAtKill || k.StateAfter != adminapi.CampaignStateRunning || k.StateAtKill != string(store.CampaignRunning) {
		r.problem("campaign %s: killed in stage %d (%s), resumed in stage %d (%s)", id, k.StageAtKill, k.StateAtKill, k.StageAfter, k.StateAfter)
	}
	run.FleetdKills = append(run.FleetdKills, k)
	r.f.cfg.Logger.Info("fleetd killed mid-campaign", "campaign", id, "stage", k.StageAtKill, "resumed_stage", k.StageAfter)
}

// revoke revokes Revoke devices that took part in no fault, waits until
// fleetd's revocation histogram has counted them, and stops their agents.
func (r *campaigner) revoke(ctx context.Context) error {
	var ids []string
	for i := len(r.f.ids) - 1; i >= 0 && len(ids) < r.m.Revoke; i-- {
		id := r.f.ids[i]
		if !r.excluded[id] {
			ids = append(ids, id)
		}
	}
	before := uint64(0)
	if r.bank.addr != "" {
		if hs, err := r.bank.total(ctx); err == nil {
			before = hs[metricRevocation].Count
		}
	}
	t0 := time.Now()
	for _, id := range ids {
		if _, err := r.c.Revoke(ctx, id, "fleetsim: revocation latency (M5)"); err != nil {
			return fmt.Errorf("simulator: revoke %s: %w", id, err)
		}
		r.excluded[id] = true
	}
	r.rep.Revoked = len(ids)
	if r.bank.addr != "" {
		deadline := time.Now().Add(30 * time.Second)
		for {
			hs, err := r.bank.total(ctx)
			if err == nil && hs[metricRevocation].Count >= before+uint64(len(ids)) {
				break
			}
			if time.Now().After(deadline) {
				r.problem("fleetd counted fewer than %d revocations after 30 s", len(ids))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	r.rep.RevokeS = time.Since(t0).Seconds()
	for _, id := range ids {
		r.f.stopAgent(id) // a revoked device's agent would retry forever
	}
	return nil
}

// audit verifies the chain and reads it once: each campaign's records by
// action, and any version issued twice.
func (r *campaigner) audit(ctx context.Context) error {
	v, err := r.c.VerifyAudit(ctx)
	if err != nil {
		return fmt.Errorf("simulator: verify audit: %w", err)
	}
	r.rep.AuditVerified, r.rep.AuditRecords = v.OK, v.Records
	if !v.OK {
		r.problem("audit chain does not verify: %s", v.Error)
	}
	runs := map[string]*CampaignRun{}
	for i := range r.rep.Runs {
		r.rep.Runs[i].Audit = map[string]int{}
		runs[r.rep.Runs[i].ID] = &r.rep.Runs[i]
	}
	issued := map[string]int{}
	err = r.c.ExportAudit(ctx, 0, func(rec adminapi.AuditRecord) error {
		if rec.Action == "issued" {
			issued[fmt.Sprintf("%s slot %d v%d", rec.Device, rec.Slot, rec.Version)]++
		}
		id, ok := strings.CutPrefix(rec.Actor, "campaign:")
		if !ok {
			if rest, ok2 := strings.CutPrefix(rec.Detail, "campaign "); ok2 {
				id, _, _ = strings.Cut(rest, ":")
				ok = true
			}
		}
		if run := runs[id]; ok && run != nil {
			run.Audit[rec.Action]++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("simulator: read audit: %w", err)
	}
	for k, n := range issued {
		if n > 1 {
			r.rep.VersionsIssuedTwice = append(r.rep.VersionsIssuedTwice, k)
		}
	}
	sort.Strings(r.rep.VersionsIssuedTwice)
	if len(r.rep.VersionsIssuedTwice) > 0 {
		r.problem("%d versions issued more than once, e.g. %s", len(r.rep.VersionsIssuedTwice), r.rep.VersionsIssuedTwice[0])
	}
	return nil
}
