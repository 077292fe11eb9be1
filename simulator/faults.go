package simulator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyfleet/keyfleet/device"
)

// Faults says what goes wrong during a run. Fractions are of the devices,
// chosen at random (Seed makes the choice repeatable).
type Faults struct {
	// CrashFraction of the devices crash once, at a random step of their
	// first rotation (after making the key, after enrolling, after storing
	// the certificate, or after promoting it), and restart from their
	// keystore directory after CrashRestart (default 500 ms).
	CrashFraction float64       `yaml:"crash_fraction" json:"crash_fraction"`
	CrashRestart  time.Duration `yaml:"crash_restart" json:"crash_restart"`
	// OfflineFraction of the devices are offline when each round's
	// rotation is requested and come back after OfflineFor (default 5 s).
	OfflineFraction float64       `yaml:"offline_fraction" json:"offline_fraction"`
	OfflineFor      time.Duration `yaml:"offline_for" json:"offline_for"`
	// FlapFraction of the devices lose their connection every FlapEvery
	// (default 1 s) for the whole run.
	FlapFraction float64       `yaml:"flap_fraction" json:"flap_fraction"`
	FlapEvery    time.Duration `yaml:"flap_every" json:"flap_every"`
	// DropRate, DupRate and DelayRate are per-message probabilities, on
	// every device's link in both directions, of losing a message,
	// delivering it twice, or holding it for Delay (default 2 s). With any
	// of them set, agents report every ReportEvery (default 10 s) so that
	// fleetd can resend what was lost.
	DropRate    float64       `yaml:"drop_rate" json:"drop_rate"`
	ReportEvery time.Duration `yaml:"report_every" json:"report_every"`
	DupRate     float64       `yaml:"dup_rate" json:"dup_rate"`
	DelayRate   float64       `yaml:"delay_rate" json:"delay_rate"`
	Delay       time.Duration `yaml:"delay" json:"delay"`
	// SkewFraction of the devices run a clock off by up to ±Skew (default 2
	// minutes), uniformly.
	SkewFraction float64       `yaml:"skew_fraction" json:"skew_fraction"`
	Skew         time.Duration `yaml:"skew" json:"skew"`
	// FleetdKills SIGKILLs fleetd this many times during the first round,
	// spread over its progress, and starts it again (needs --fleetd-bin).
	FleetdKills int `yaml:"fleetd_kills" json:"fleetd_kills"`
	// BrokerRestarts restarts fleetd in order (SIGTERM), and with it the
	// embedded broker, this many times during the first round.
	BrokerRestarts int `yaml:"broker_restarts" json:"broker_restarts"`
	// Seed for the random choices; 0 picks one.
	Seed uint64 `yaml:"seed" json:"seed"`
}

// Validate checks the fractions: each in [0, 1], together at most 1 (the
// sets are disjoint).
func (f Faults) Validate() error {
	sum := 0.0
	for name, v := range map[string]float64{"crash_fraction": f.CrashFraction, "offline_fraction": f.OfflineFraction,
		"flap_fraction": f.FlapFraction} {
		if v < 0 || v > 1 {
			return fmt.Errorf("faults: %s %v is not between 0 and 1", name, v)
		}
		sum += v
	}
	for name, v := range map[string]float64{"drop_rate": f.DropRate, "dup_rate": f.DupRate, "delay_rate": f.DelayRate,
		"skew_fraction": f.SkewFraction} {
		if v < 0 || v > 1 {
			return fmt.Errorf("faults: %s %v is not between 0 and 1", name, v)
		}
	}
	if f.DropRate+f.DupRate+f.DelayRate > 1 {
		return fmt.Errorf("faults: message fault rates add up to more than 1")
	}
	if sum > 1 {
		return fmt.Errorf("faults: fractions add up to %v, more than the whole fleet", sum)
	}
	if f.FleetdKills < 0 || f.BrokerRestarts < 0 {
		return fmt.Errorf("faults: fleetd_kills and broker_restarts must not be negative")
	}
	if f.CrashRestart < 0 || f.OfflineFor < 0 || f.FlapEvery < 0 {
		return fmt.Errorf("faults: durations must not be negative")
	}
	return nil
}

// FaultCounts is what was injected.
type FaultCounts struct {
	Dropped        uint64 `json:"messages_dropped"`
	Duplicated     uint64 `json:"messages_duplicated"`
	Delayed        uint64 `json:"messages_delayed"`
	Skewed         uint64 `json:"skewed_clocks"`
	Crashes        uint64 `json:"crashes"`
	Offline        uint64 `json:"offline"`
	Flaps          uint64 `json:"flaps"`
	FleetdKills    uint64 `json:"fleetd_kills"`
	BrokerRestarts uint64 `json:"broker_restarts"`
}

// crashSteps are the agent's failpoints.
var crashSteps = []string{"after-pending-key", "after-enroll", "after-cert-stored", "after-promote"}

type faultPlan struct {
	f                        Faults
	crashAt                  map[string]string // device -> step
	offline                  []string
	flap                     []string
	crashes, offlines, flaps atomic.Uint64
	kills, restarts          atomic.Uint64
	dropped, duped, delayed  atomic.Uint64
	skew                     map[string]time.Duration
	rmu                      sync.Mutex
	r                        *rand.Rand
}

func planFaults(f Faults, ids []string) *faultPlan {
	if f.CrashRestart == 0 {
		f.CrashRestart = 500 * time.Millisecond
	}
	if f.OfflineFor == 0 {
		f.OfflineFor = 5 * time.Second
	}
	if f.FlapEvery == 0 {
		f.FlapEvery = time.Second
	}
	if f.Delay == 0 {
		f.Delay = 2 * time.Second
	}
	if f.ReportEvery == 0 {
		f.ReportEvery = 10 * time.Second
	}
	if f.Skew == 0 {
		f.Skew = 2 * time.Minute
	}
	seed := f.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p := &faultPlan{f: f, crashAt: map[string]string{}, skew: map[string]time.Duration{},
		r: rand.New(rand.NewPCG(seed+1, seed^0x51))}
	// Disjoint sets, so each device shows one kind of fault.
	perm := r.Perm(len(ids))
	n := func(frac float64) int { return int(frac*float64(len(ids)) + 0.5) }
	i := 0
	for k := 0; k < n(f.CrashFraction) && i < len(perm); k, i = k+1, i+1 {
		p.crashAt[ids[perm[i]]] = crashSteps[r.IntN(len(crashSteps))]
	}
	for k := 0; k < n(f.OfflineFraction) && i < len(perm); k, i = k+1, i+1 {
		p.offline = append(p.offline, ids[perm[i]])
	}
	for k := 0; k < n(f.FlapFraction) && i < len(perm); k, i = k+1, i+1 {
		p.flap = append(p.flap, ids[perm[i]])
	}
	// Skewed clocks may coincide with the other faults: a device with a
	// bad clock can crash too.
	for _, j := range r.Perm(len(ids))[:n(f.SkewFraction)] {
		p.skew[ids[j]] = time.Duration((r.Float64()*2 - 1) * float64(f.Skew))
	}
	return p
}

// linky reports whether any message fault is on.
func (p *faultPlan) linky() bool { return p.f.DropRate+p.f.DupRate+p.f.DelayRate > 0 }

func (p *faultPlan) roll() float64 {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	return p.r.Float64()
}

// link is the agents' Link when message faults are on.
func (p *faultPlan) link(_ string, b []byte) [][]byte {
	switch x := p.roll(); {
	case x < p.f.DropRate:
		p.dropped.Add(1)
		return nil
	case x < p.f.DropRate+p.f.DupRate:
		p.duped.Add(1)
		return [][]byte{b, b}
	case x < p.f.DropRate+p.f.DupRate+p.f.DelayRate:
		p.delayed.Add(1)
		time.Sleep(p.f.Delay)
	}
	return [][]byte{b}
}

func (p *faultPlan) counts() FaultCounts {
	return FaultCounts{Dropped: p.dropped.Load(), Duplicated: p.duped.Load(), Delayed: p.delayed.Load(),
		Skewed: uint64(len(p.skew)), Crashes: p.crashes.Load(), Offline: p.offlines.Load(), Flaps: p.flaps.Load(),
		FleetdKills: p.kills.Load(), BrokerRestarts: p.restarts.Load()}
}

// running is one live agent.
type running struct {
	agent  *device.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

// startAgent runs an agent for id; withFaults arms its crash failpoint.
func (f *fleet) startAgent(id string, withFaults bool) error {
	ctx, cancel := context.WithCancel(f.ctx)
	opts := device.Options{Dir: filepath.Join(f.cfg.DeviceDir, id), Logger: f.cfg.Logger, OnEvent: f.onEvent,
		// Simulated devices share this machine's one disk where real ones
		// each have their own flash: their keystores skip fsync (writes stay
		// atomic against a crash of the process, which is what the
		// simulator's faults are).
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: 5 * time.Second, NoSync: true}
	if f.faults.linky() {
		opts.Link = f.faults.link
		opts.ReportEvery = f.faults.f.ReportEvery
		opts.StepTimeout = f.faults.f.ReportEvery
	}
	if f.canary != nil {
		opts.Link = f.canary.wrap(id, opts.Link)
	}
	if off, ok := f.faults.skew[id]; ok {
		opts.Now = func() time.Time { return time.Now().Add(off) }
	}
	if step, ok := f.faults.crashAt[id]; ok && withFaults {
		var once sync.Once
		opts.Failpoint = func(s string) {
			if s != step {
				return
			}
			crashed := false
			once.Do(func() { crashed = true })
			if !crashed {
				return
			}
			// Die here: no further step runs. The process's death closes
			// its connection; a new agent restarts from the directory.
			f.faults.crashes.Add(1)
			go f.restartAfterCrash(id)
			<-ctx.Done()
			runtime.Goexit()
		}
	}
	a, err := device.New(opts)
	if err != nil {
		cancel()
		return err
	}
	r := &running{agent: a, cancel: cancel, done: make(chan struct{})}
	f.agentsMu.Lock()
	f.agents[id] = r
	f.agentsMu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(r.done)
		_ = a.Run(ctx)
	}()
	return nil
}

// stopAgent stops id's agent and keeps its byte counts.
func (f *fleet) stopAgent(id string) {
	f.agentsMu.Lock()
	r := f.agents[id]
	delete(f.agents, id)
	f.agentsMu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
	r.agent.Abort()
	u, d := r.agent.Bytes()
	f.agentsMu.Lock()
	f.pastUp += u
	f.pastDown += d
	f.agentsMu.Unlock()
}

func (f *fleet) restartAfterCrash(id string) {
	f.stopAgent(id)
	select {
	case <-f.ctx.Done():
		return
	case <-time.After(f.faults.f.CrashRestart):
	}
	if err := f.startAgent(id, false); err != nil {
		f.cfg.Logger.Error("restart after crash failed", "device", id, "err", err)
	}
}

// goOffline takes the offline devices away before a round's request and
// brings them back after OfflineFor.
func (f *fleet) goOffline() {
	for _, id := range f.faults.offline {
		f.stopAgent(id)
		f.faults.offlines.Add(1)
	}
	if len(f.faults.offline) == 0 {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		select {
		case <-f.ctx.Done():
			return
		case <-time.After(f.faults.f.OfflineFor):
		}
		for _, id := range f.faults.offline {
			if err := f.startAgent(id, false); err != nil {
				f.cfg.Logger.Error("return from offline failed", "device", id, "err", err)
			}
		}
	}()
}

func (f *fleet) flapLoop() {
	t := time.NewTicker(f.faults.f.FlapEvery)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		for _, id := range f.faults.flap {
			f.agentsMu.Lock()
			r := f.agents[id]
			f.agentsMu.Unlock()
			if r != nil {
				r.agent.Flap()
				f.faults.flaps.Add(1)
			}
		}
	}
}

// disruptions returns the hook that, as a round progresses, SIGKILLs or
// restarts fleetd at evenly spaced points of its progress (kills first).
// Each runs in the background; the round goes on waiting meanwhile.
func (f *fleet) disruptions(ctx context.Context, total int) func(done int) {
	if kill := f.nodeKill(ctx, total); kill != nil {
		return kill
	}
	sp := f.cfg.spawned
	if sp == nil {
		return nil
	}
	var events []syscall.Signal
	for i := 0; i < f.faults.f.FleetdKills; i++ {
		events = append(events, syscall.SIGKILL)
	}
	for i := 0; i < f.faults.f.BrokerRestarts; i++ {
		events = append(events, syscall.SIGTERM)
	}
	if len(events) == 0 {
		return nil
	}
	var mu sync.Mutex
	next, busy := 0, false
	return func(done int) {
		mu.Lock()
		defer mu.Unlock()
		if busy || next >= len(events) || done < (next+1)*total/(len(events)+1) {
			return
		}
		sig := events[next]
		next++
		busy = true
		go func() {
			if err := sp.restart(ctx, sig); err != nil {
				f.cfg.Logger.Error("fleetd restart failed", "err", err)
			}
			if sig == syscall.SIGKILL {
				f.faults.kills.Add(1)
			} else {
				f.faults.restarts.Add(1)
			}
			mu.Lock()
			busy = false
			mu.Unlock()
		}()
	}
}
