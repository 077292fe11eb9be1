package campaign

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Run advances the campaigns every Tick until ctx ends: the ones fleetd
// was running when it stopped resume where their records say. Each Run is
// a term: when several fleetd processes share the store, only the one
// holding the leader lease runs campaigns, and a process that takes the
// lease over calls Run again. A term starts afresh, as a restarted fleetd
// would: devices in progress are timed from its start (the previous
// leader's devices were reconnecting meanwhile), rates refill and nudges
// start over.
func (s *Service) Run(ctx context.Context) {
	s.mu.Lock()
	s.born = s.opts.Now()
	clear(s.buckets)
	clear(s.nudged)
	s.mu.Unlock()
	t := time.NewTicker(s.opts.Tick)
	defer t.Stop()
	for {
		s.Step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Step advances every campaign that has something to do once: observes
// its devices, pauses it above its failure threshold, starts the devices
// its stage and rate allow, and moves it to the next stage.
func (s *Service) Step(ctx context.Context) {
	cs, err := s.List(ctx)
	if err != nil {
		s.opts.Logger.Error("campaigns not read", "err", err)
		return
	}
	if s.opts.Observer != nil {
		s.opts.Observer.Campaigns(cs)
	}
	for _, c := range cs {
		if ctx.Err() != nil {
			return
		}
		if !live(c) {
			continue
		}
		switch err := s.step(ctx, c.ID); {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, errStale):
			// Another process (an operator's action, a leader that took
			// over) wrote the record since this step read it: its write
			// stands, and the next tick steps from it.
			s.opts.Logger.Debug("campaign step dropped; retried next tick", "campaign", c.ID, "err", err)
		default:
			s.opts.Logger.Error("campaign step failed", "campaign", c.ID, "err", err)
		}
	}
}

// live reports whether c has anything left to do: starting devices, or
// observing ones started (also after completion or abort: away devices
// converge later).
func live(c *store.Campaign) bool {
	if c.State == store.CampaignRunning {
		return true
	}
	if c.State == store.CampaignRolledBack {
		return !c.RolledBackAt.IsZero() && c.RecoveredAt.IsZero() // its recovery is watched
	}
	for _, d := range c.Devices {
		if d.Status == store.DeviceInProgress || d.Status == store.DeviceAway {
			return true
		}
	}
	return false
}

func (s *Service) step(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.opts.Store.GetCampaign(ctx, id)
	if err != nil {
		return err
	}
	kind := s.kindOf(c)
	if kind == nil {
		return fmt.Errorf("campaign: %s has unknown kind %q", c.ID, c.Kind)
	}
	actor := "campaign:" + c.ID
	if c.State == store.CampaignRolledBack {
		if ev := s.recovery(ctx, c, kind); ev != nil {
			return s.save(ctx, c, *ev)
		}
		return nil
	}
	var events []store.Event
	changed := s.observe(ctx, c, kind, actor)
	if c.State == store.CampaignRunning {
		if ev := s.checkFailures(c); ev != nil {
			events, changed = append(events, *ev), true
		}
	}
	if c.State == store.CampaignRunning {
		started, err := s.start(ctx, c, kind, actor)
		if err != nil {
			return err
		}
		changed = changed || started
		if ev := s.advance(c); ev != nil && s.completed(ctx, c, kind, actor) {
			events, changed = append(events, *ev), true
		}
	}
	if !changed {
		return nil
	}
	return s.save(ctx, c, events...)
}

// errStale: the campaign's record changed since it was read (through
// another process sharing the store); the write that found it so is
// dropped.
var errStale = errors.New("campaign: record changed meanwhile")

// save writes c, read at c.UpdatedAt, if the stored record is still the
// one read: a compare-and-set on UpdatedAt, which every write of a
// campaign moves forward (stamp). Within one process s.mu orders the
// writes; across processes the comparison keeps an operator's Pause made
// on another node, or the record of a leader that took over, from being
// overwritten by a step that read before it (errStale).
func (s *Service) save(ctx context.Context, c *store.Campaign, events ...store.Event) error {
	readAt := c.UpdatedAt
	c.UpdatedAt = s.stamp(readAt)
	_, err := s.opts.Store.UpdateCampaign(ctx, c.ID, func(cur *store.Campaign) ([]store.Event, error) {
		if !cur.UpdatedAt.Equal(readAt) {
			return nil, fmt.Errorf("%w: %s read at %s, now %s", errStale, c.ID,
				readAt.Format(time.RFC3339Nano), cur.UpdatedAt.Format(time.RFC3339Nano))
		}
		*cur = *c
		return events, nil
	})
	if err != nil {
		c.UpdatedAt = readAt
		return err
	}
	for _, ev := range events {
		s.opts.Logger.Info("campaign "+ev.Action, "campaign", c.ID, "detail", ev.Detail)
	}
	return nil
}

// stamp returns the UpdatedAt of a write over a record stamped prev: now,
// to the microsecond (what every store keeps exactly), and always after
// prev, so that two writes within one clock reading still differ.
func (s *Service) stamp(prev time.Time) time.Time {
	now := s.opts.Now().Truncate(time.Microsecond)
	if floor := prev.Truncate(time.Microsecond).Add(time.Microsecond); now.Before(floor) {
		return floor
	}
	return now
}

// connectedSince returns when device's current session began, if the
// Sessions know it (the embedded broker does).
func (s *Service) connectedSince(device string) (time.Time, bool) {
	cs, ok := s.opts.Sessions.(interface {
		ConnectedSince(device string) (time.Time, bool)
	})
	if !ok {
		return time.Time{}, false
	}
	return cs.ConnectedSince(device)
}

// connected reports whether device has been reached since since: it is
// connected now, or (without Sessions) its last hello came after since.
func (s *Service) connected(d *store.Device, since time.Time) bool {
	if s.opts.Sessions != nil {
		return s.opts.Sessions.Present(d.ID)
	}
	return !d.LastSeen.Before(since)
}

// observe reads the outcome of every started device from its record.
func (s *Service) observe(ctx context.Context, c *store.Campaign, kind Kind, actor string) bool {
	changed := false
	now := s.opts.Now()
	for i := range c.Devices {
		cd := &c.Devices[i]
		if cd.Status != store.DeviceInProgress && cd.Status != store.DeviceAway || cd.Version == 0 {
			continue
		}
		d, err := s.opts.Store.GetDevice(ctx, cd.ID)
		if errors.Is(err, store.ErrNotExist) {
			cd.Status, cd.Finished, cd.Detail, changed = store.DeviceFailed, now, "device deleted", true
			s.finished(c, i, ResultFailed)
			continue
		} else if err != nil {
			s.opts.Logger.Warn("campaign device not read", "campaign", c.ID, "device", cd.ID, "err", err)
			continue
		}
		switch out, why := kind.Outcome(d, cd.Version); {
		case out == Succeeded:
			cd.Status, cd.Finished, cd.Detail, changed = store.DeviceSucceeded, now, "", true
			s.finished(c, i, ResultSucceeded)
		case out == Failed:
			cd.Status, cd.Finished, cd.Detail, changed = store.DeviceFailed, now, why, true
			s.finished(c, i, ResultFailed)
		case cd.Status == store.DeviceAway && s.connected(d, now):
			// Back: its change goes on, timed from now.
			cd.Status, cd.Started, cd.Detail, changed = store.DeviceInProgress, now, "came back", true
		case cd.Status == store.DeviceInProgress && now.Sub(later(cd.Started, s.born)) < c.DeviceTimeout:
			s.nudge(ctx, c, cd, now, kind)
		case cd.Status == store.DeviceInProgress:
			if !s.connected(d, cd.Started) {
				cd.Status, cd.Detail, changed = store.DeviceAway, "not connected", true
				s.finished(c, i, ResultAway)
				continue
			}
			if at, ok := s.connectedSince(cd.ID); ok && now.Sub(at) < c.DeviceTimeout {
				// It reconnected within its timeout (fleetd restarted and
				// a fleet is reconnecting, or its link dropped): it has not
				// timed out while connected. It gets up to a second timeout;
				// past that it counts as away and, still connected, comes
				// back with a fresh one, so a device that keeps
				// reconnecting never holds its stage.
				if now.Sub(later(cd.Started, s.born)) < 2*c.DeviceTimeout {
					s.nudge(ctx, c, cd, now, kind)
					continue
				}
				cd.Status, changed = store.DeviceAway, true
				cd.Detail = fmt.Sprintf("connected only %v of its %v timeout", now.Sub(at).Round(time.Second), c.DeviceTimeout)
				s.finished(c, i, ResultAway)
				continue
			}
			detail := fmt.Sprintf("timed out after %v while connected", c.DeviceTimeout)
			if err := kind.GiveUp(ctx, cd.ID, cd.Version, actor, detail); err != nil {
				s.opts.Logger.Warn("campaign could not give up a change", "campaign", c.ID, "device", cd.ID, "err", err)
				continue
			}
			cd.Status, cd.Finished, cd.Detail, changed = store.DeviceFailed, now, detail, true
			s.finished(c, i, ResultFailed)
		}
		if cd.Status == store.DeviceSucceeded || cd.Status == store.DeviceFailed {
			delete(s.nudged, c.ID+"/"+cd.ID)
		}
	}
	return changed
}

// nudgeEvery is how often a connected device's open change is sent again:
// a quarter of the device timeout, at most this.
const nudgeEvery = 10 * time.Second

// nudge sends cd's open change again if a nudge interval has passed since
// it started or was last nudged (kept in memory: a restart nudges anew).
func (s *Service) nudge(ctx context.Context, c *store.Campaign, cd *store.CampaignDevice, now time.Time, kind Kind) {
	key := c.ID + "/" + cd.ID
	last := s.nudged[key]
	if last.Before(cd.Started) {
		last = cd.Started
	}
	if now.Sub(last) < min(nudgeEvery, c.DeviceTimeout/4) || (s.opts.Sessions != nil && !s.opts.Sessions.Present(cd.ID)) {
		return
	}
	s.nudged[key] = now
	if err := kind.Nudge(ctx, cd.ID); err != nil {
		s.opts.Logger.Warn("campaign could not resend a change", "campaign", c.ID, "device", cd.ID, "err", err)
	}
}

// Counts are a campaign's devices by status, over the stages begun.
type Counts struct {
	Started, InProgress, Succeeded, Failed, Away, Cancelled int
}

// Reached is how many devices finished, one way or the other.
func (n Counts) Reached() int { return n.Succeeded + n.Failed }

// CountUpTo counts the first n devices of c by status.
func CountUpTo(c *store.Campaign, n int) Counts {
	var out Counts
	for _, d := range c.Devices[:n] {
		switch d.Status {
		case store.DevicePending:
			continue
		case store.DeviceInProgress:
			out.InProgress++
		case store.DeviceSucceeded:
			out.Succeeded++
		case store.DeviceFailed:
			out.Failed++
		case store.DeviceAway:
			out.Away++
		case store.DeviceCancelled:
			out.Cancelled++
		}
		out.Started++
	}
	return out
}

// minReached is the reached count a stage needs: the operator's, but never
// more than the stage has devices.
func minReached(c *store.Campaign, target int) int { return min(c.MinReached, target) }

// checkFailures pauses c when the failure ratio over the reached devices
// is above its threshold, once enough were reached to judge.
func (s *Service) checkFailures(c *store.Campaign) *store.Event {
	target := Targets(c)[c.Stage]
	n := CountUpTo(c, target)
	if n.Reached() == 0 || n.Reached() < minReached(c, target) {
		return nil
	}
	ratio := float64(n.Failed) / float64(n.Reached())
	if ratio <= c.MaxFailure {
		return nil
	}
	c.State = store.CampaignPaused
	c.Reason = fmt.Sprintf("paused itself in stage %d: %d of %d reached devices failed (%.1f%%, above %.1f%%)",
		c.Stage+1, n.Failed, n.Reached(), 100*ratio, 100*c.MaxFailure)
	if s.opts.Observer != nil {
		s.opts.Observer.SelfPaused(c.ID)
	}
	return &store.Event{Action: "campaign-paused", Actor: "campaign:" + c.ID, Detail: "campaign " + c.ID + ": " + c.Reason}
}

// startParallel bounds the devices a step starts at once.
const startParallel = 32

// start starts the pending devices of the current stage that the rate
// allows. It records them as in progress before asking (so that a restart
// in between finds what was asked, through Kind.Requested, and asks
// nothing twice) and with their versions after.
func (s *Service) start(ctx context.Context, c *store.Campaign, kind Kind, actor string) (bool, error) {
	target := Targets(c)[c.Stage]
	now := s.opts.Now()
	b := s.bucket(c)
	var idx []int
	for i := range c.Devices[:target] {
		cd := &c.Devices[i]
		if cd.Status == store.DeviceInProgress && cd.Version == 0 {
			idx = append(idx, i) // asked for before a restart, perhaps
			continue
		}
		if cd.Status != store.DevicePending || !b.take(now) {
			continue
		}
		cd.Status, cd.Started = store.DeviceInProgress, now
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return false, nil
	}
	if err := s.save(ctx, c); err != nil {
		return false, err
	}
	// Each start is a store write with its fsync, which the store's group
	// commit shares among concurrent writers: one at a time, a stage of
	// thousands would start at the disk's fsync rate, not at the rate.
	errs := make([]error, len(idx))
	sem := make(chan struct{}, startParallel)
	var wg sync.WaitGroup
	for k, i := range idx {
		cd := &c.Devices[i]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, err := s.opts.Store.GetDevice(ctx, cd.ID)
			if err == nil && !d.Revoked {
				if v := kind.Requested(d, cd.Started); v != 0 {
					cd.Version = v
				} else {
					cd.Version, err = kind.Start(ctx, cd.ID, actor)
				}
			} else if err == nil {
				err = rotation.ErrRevoked
			}
			errs[k] = err
		}()
	}
	wg.Wait()
	for k, i := range idx {
		cd, err := &c.Devices[i], errs[k]
		switch {
		case errors.Is(err, store.ErrNotExist), errors.Is(err, rotation.ErrRevoked):
			cd.Status, cd.Finished, cd.Detail = store.DeviceFailed, now, err.Error()
			s.finished(c, i, ResultFailed)
		case err != nil:
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			cd.Status, cd.Finished, cd.Detail = store.DeviceFailed, now, "errored: "+err.Error()
			s.finished(c, i, ResultFailed)
		case s.opts.Sessions != nil && !s.opts.Sessions.Present(cd.ID):
			cd.Status, cd.Detail = store.DeviceAway, "not connected"
			s.finished(c, i, ResultAway)
		}
	}
	return true, nil
}

// advance moves c to its next stage, or completes it, once every device of
// the stage has finished or is away and enough were reached.
func (s *Service) advance(c *store.Campaign) *store.Event {
	targets := Targets(c)
	target := targets[c.Stage]
	n := CountUpTo(c, target)
	if n.Started < target || n.InProgress > 0 || n.Reached() < minReached(c, target) {
		return nil
	}
	summary := fmt.Sprintf("stage %d of %d done: %d succeeded, %d failed, %d away", c.Stage+1, len(targets),
		n.Succeeded, n.Failed, n.Away)
	if c.Stage == len(targets)-1 {
		c.State, c.Reason = store.CampaignCompleted, summary
		return &store.Event{Action: "campaign-completed", Actor: "campaign:" + c.ID, Detail: "campaign " + c.ID + ": " + summary}
	}
	c.Stage++
	c.StageStarted, c.Reason = s.opts.Now(), summary
	return &store.Event{Action: "campaign-stage", Actor: "campaign:" + c.ID, Detail: "campaign " + c.ID + ": " + summary}
}

// completed runs the kind's Complete when advance just completed c, and
// reports whether c may be recorded so; if Complete failed, c is running
// again in its last stage and the next step retries.
func (s *Service) completed(ctx context.Context, c *store.Campaign, kind Kind, actor string) bool {
	k, ok := kind.(Completer)
	if !ok || c.State != store.CampaignCompleted {
		return true
	}
	if err := k.Complete(ctx, c, actor); err != nil {
		s.opts.Logger.Error("campaign not completed; retried", "campaign", c.ID, "err", err)
		c.State, c.Reason = store.CampaignRunning, "completing: "+err.Error()
		return false
	}
	return true
}

// bucket is a token bucket per campaign: Rate devices a minute, in bursts
// of at most one tick's worth.
type bucket struct {
	rate   float64 // per second; 0: no bound
	burst  float64
	tokens float64
	last   time.Time
}

func (s *Service) bucket(c *store.Campaign) *bucket {
	b := s.buckets[c.ID]
	if b == nil || b.rate != float64(c.Rate)/60 {
		rate := float64(c.Rate) / 60
		burst := max(1, rate*s.opts.Tick.Seconds())
		b = &bucket{rate: rate, burst: burst, tokens: burst, last: s.opts.Now()}
		s.buckets[c.ID] = b
	}
	return b
}

func (b *bucket) take(now time.Time) bool {
	if b.rate == 0 {
		return true
	}
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// recovery watches a rolled-back campaign: once every device it rolled
// back that is connected runs a state the broker and engine accept
// (Reverter.Recovered), the campaign is recovered, and the time since the
// rollback goes to the observer (M10). A device not connected converges
// when it comes back and is not waited for. It returns the audit event
// when the campaign has just recovered.
func (s *Service) recovery(ctx context.Context, c *store.Campaign, kind Kind) *store.Event {
	if rk, ok := kind.(Reverter); ok {
		for _, cd := range c.Devices {
			if cd.Status != store.DeviceCancelled || cd.Version == 0 {
				continue
			}
			d, err := s.opts.Store.GetDevice(ctx, cd.ID)
			if err != nil || d.Revoked || !s.connected(d, c.RolledBackAt) {
				continue
			}
			if !rk.Recovered(d, cd.Version) {
				return nil
			}
		}
	}
	now := s.opts.Now()
	took := max(now.Sub(c.RolledBackAt), 0)
	c.RecoveredAt = now
	if s.opts.Observer != nil {
		s.opts.Observer.Recovered(c.ID, SlotOf(c.Kind), took)
	}
	return &store.Event{Action: "campaign-recovered", Actor: "campaign:" + c.ID,
		Detail: fmt.Sprintf("campaign %s: every device rolled back and connected runs an accepted state, %v after the rollback", c.ID, took.Round(time.Millisecond))}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
