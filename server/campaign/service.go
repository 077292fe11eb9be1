package campaign

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/store"
)

// ErrInvalid marks a campaign refused as asked (bad spec, unknown kind,
// an action its state does not allow); the admin API answers 400.
var ErrInvalid = errors.New("campaign: invalid")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Store is what campaigns need of the store.
type Store interface {
	store.CampaignStore
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
}

// Sessions tells whether a device is connected now; the embedded broker
// satisfies it. If it also has ConnectedSince(device) (time.Time, bool),
// as the embedded broker does, a device that reconnected within its
// timeout is not failed as timed out while connected. Without it (an external broker) a device counts as
// connected once its last hello is later than the time it was started.
type Sessions interface {
	Present(device string) bool
}

// Options configures a Service. Store and Kinds are required.
type Options struct {
	Store Store
	// Kinds by name (KindIdentity, ...).
	Kinds    map[string]Kind
	Sessions Sessions
	// Observer hears devices finish and campaigns pause; nil: nobody.
	Observer Observer
	// Tick is how often running campaigns advance; default 1 s.
	Tick time.Duration
	// Clustered refuses anchors and firmware campaigns (store.ErrClustered)
	// from the start; SetClustered changes it later.
	Clustered bool
	Now       func() time.Time
	Logger    *slog.Logger
}

// Service creates campaigns, takes the operator's actions on them and
// runs them (Run).
type Service struct {
	opts Options
	// mu serialises a campaign's steps with the operator's actions, so
	// neither overwrites the other's record.
	mu      sync.Mutex
	buckets map[string]*bucket
	nudged  map[string]time.Time // campaign/device: last nudge
	// born is when this Service began: a device started before it (by
	// a fleetd that stopped) has its timeout counted from here, since no
	// device could finish while fleetd was down and its devices are
	// reconnecting to it.
	born      time.Time
	clustered atomic.Bool
}

// SetClustered refuses, while several fleetd processes share the store,
// the campaigns whose kinds change what each process keeps in its own data
// directory: anchors (the chain) and firmware (the releases). Create then
// answers store.ErrClustered; campaigns of other kinds run as before.
func (s *Service) SetClustered(on bool) { s.clustered.Store(on) }

// New returns a Service; Run advances its campaigns.
func New(opts Options) *Service {
	opts.Tick = cmp.Or(opts.Tick, time.Second)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	s := &Service{opts: opts, buckets: map[string]*bucket{}, nudged: map[string]time.Time{}, born: opts.Now()}
	s.clustered.Store(opts.Clustered)
	return s
}

// Spec is what an operator asks for.
type Spec struct {
	Kind          string
	Selector      string
	Stages        []float64 // cumulative fractions, ascending, the last 1
	MaxFailure    float64
	MinReached    int
	Rate          int // devices per minute; 0: no bound
	DeviceTimeout time.Duration
	// Release is the staged firmware release a firmware campaign rolls
	// out; other kinds take none.
	Release uint32
	// Devices, if set, limits the campaign to these of the devices the
	// selector selects (fleetd's scheduler names the devices due).
	Devices []string
	// Roles are the anchor keys an anchors campaign replaces (empty:
	// those of the set prepared already, or the CA and update keys).
	Roles []string
}

func (sp Spec) validate(kinds map[string]Kind) error {
	k, ok := kinds[sp.Kind]
	if !ok {
		return invalid("unknown kind %q", sp.Kind)
	}
	if ck, ok := k.(SpecChecker); ok {
		if err := ck.CheckSpec(sp); err != nil {
			return err
		}
	} else if sp.Release != 0 {
		return invalid("kind %q takes no release", sp.Kind)
	}
	prev := 0.0
	for _, st := range sp.Stages {
		if !(st > prev) || st > 1 {
			return invalid("stages %v must ascend within (0, 1]", sp.Stages)
		}
		prev = st
	}
	switch {
	case prev != 1:
		return invalid("stages %v must end at 100%%", sp.Stages)
	case sp.MaxFailure < 0 || sp.MaxFailure > 1 || math.IsNaN(sp.MaxFailure):
		return invalid("max failure %v is not a ratio", sp.MaxFailure)
	case sp.MinReached < 0 || sp.Rate < 0:
		return invalid("min reached and rate must not be negative")
	case sp.DeviceTimeout <= 0:
		return invalid("device timeout must be positive")
	}
	return nil
}

// Create selects the devices and stores a running campaign over them,
// audited; Run starts its first stage.
func (s *Service) Create(ctx context.Context, sp Spec, actor string) (*store.Campaign, error) {
	if s.clustered.Load() && (sp.Kind == KindAnchors || sp.Kind == KindFirmware) {
		return nil, fmt.Errorf("campaign: %s campaign: %w", sp.Kind, store.ErrClustered)
	}
	if err := sp.validate(s.opts.Kinds); err != nil {
		return nil, err
	}
	if len(sp.Roles) > 0 && sp.Kind != KindAnchors {
		return nil, invalid("roles are for anchors campaigns, not %s", sp.Kind)
	}
	sel, err := inventory.ParseSelector(sp.Selector)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	now := s.opts.Now()
	c := &store.Campaign{Kind: sp.Kind, Selector: sel.String(), Stages: sp.Stages, MaxFailure: sp.MaxFailure,
		MinReached: sp.MinReached, Rate: sp.Rate, DeviceTimeout: sp.DeviceTimeout, Release: sp.Release, State: store.CampaignRunning,
		StageStarted: now, CreatedAt: now, UpdatedAt: now, Actor: actor}
	only := map[string]bool{}
	for _, id := range sp.Devices {
		only[id] = true
	}
	if err := s.opts.Store.ForEachDevice(ctx, func(d *store.Device) error {
		if !d.Revoked && sel.Matches(d) && (len(only) == 0 || only[d.ID]) {
			c.Devices = append(c.Devices, store.CampaignDevice{ID: d.ID})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("campaign: select devices: %w", err)
	}
	if len(c.Devices) == 0 {
		return nil, invalid("selector %q selects no device", sp.Selector)
	}
	if p, ok := s.opts.Kinds[sp.Kind].(Preparer); ok {
		if err := p.Prepare(ctx, c, sp, actor); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.opts.Store.CreateCampaign(ctx, c, store.Event{Action: "campaign-created", Actor: actor}); err != nil {
		return nil, err
	}
	s.opts.Logger.Info("campaign created", "campaign", c.ID, "kind", c.Kind, "release", c.Release, "devices", len(c.Devices), "actor", actor)
	return c, nil
}

// Get returns one campaign.
func (s *Service) Get(ctx context.Context, id string) (*store.Campaign, error) {
	return s.opts.Store.GetCampaign(ctx, id)
}

// List returns every campaign, oldest first.
func (s *Service) List(ctx context.Context) ([]*store.Campaign, error) {
	var out []*store.Campaign
	err := s.opts.Store.ForEachCampaign(ctx, func(c *store.Campaign) error { out = append(out, c); return nil })
	return out, err
}

// Pause stops a running campaign from starting devices; those started go
// on and are observed.
func (s *Service) Pause(ctx context.Context, id, actor string) (*store.Campaign, error) {
	return s.transition(ctx, id, actor, "campaign-paused", "paused by the operator", store.CampaignPaused, store.CampaignRunning)
}

// Resume runs a paused campaign again. One that paused itself pauses
// again at once if its failure ratio is still above the threshold.
func (s *Service) Resume(ctx context.Context, id, actor string) (*store.Campaign, error) {
	return s.transition(ctx, id, actor, "campaign-resumed", "resumed by the operator", store.CampaignRunning, store.CampaignPaused)
}

// Abort ends a campaign: nothing more is started; changes already asked
// for stay desired and are still observed.
func (s *Service) Abort(ctx context.Context, id, actor string) (*store.Campaign, error) {
	return s.transition(ctx, id, actor, "campaign-aborted", "aborted by the operator", store.CampaignAborted,
		store.CampaignRunning, store.CampaignPaused)
}

func (s *Service) transition(ctx context.Context, id, actor, action, reason string, to store.CampaignState, from ...store.CampaignState) (*store.Campaign, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Store.UpdateCampaign(ctx, id, func(c *store.Campaign) ([]store.Event, error) {
		ok := false
		for _, f := range from {
			ok = ok || c.State == f
		}
		if !ok {
			return nil, invalid("campaign %s is %s", c.ID, c.State)
		}
		c.State, c.Reason, c.UpdatedAt = to, reason, s.stamp(c.UpdatedAt)
		return []store.Event{{Action: action, Actor: actor, Detail: "campaign " + c.ID + ": " + reason}}, nil
	})
}

// Rollback ends a campaign and undoes what its kind can: the changes not
// finished (identity: open rotations cancelled) and, for a Reverter, the
// finished ones too (data key: the previous version primary again;
// firmware: the desired release back). Devices not started are left
// alone. The runner then watches the devices rolled back until every one
// connected runs a state the broker and engine accept, and reports the
// time that took (M10).
func (s *Service) Rollback(ctx context.Context, id, actor string) (*store.Campaign, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The record is written by compare-and-set (see save): when another
	// process wrote it meanwhile, the rollback is done again from the new
	// record, and the devices it already rolled back count as such
	// without being asked twice.
	done := map[string]bool{}
	for range rollbackAttempts - 1 {
		c, err := s.rollback(ctx, id, actor, done)
		if !errors.Is(err, errStale) {
			return c, err
		}
		s.opts.Logger.Info("campaign changed during its rollback; rolling back again", "campaign", id, "err", err)
	}
	return s.rollback(ctx, id, actor, done)
}

// rollbackAttempts bounds how often Rollback starts again on a record that
// another process keeps changing.
const rollbackAttempts = 5

// rollback is one attempt of Rollback; done holds the devices rolled back
// by earlier attempts, and gains this one's.
func (s *Service) rollback(ctx context.Context, id, actor string, done map[string]bool) (*store.Campaign, error) {
	c, err := s.opts.Store.GetCampaign(ctx, id)
	if err != nil {
		return nil, err
	}
	readAt := c.UpdatedAt
	if c.State == store.CampaignRolledBack {
		return nil, invalid("campaign %s is rolled back already", c.ID)
	}
	kind := s.kindOf(c)
	if kind == nil {
		return nil, invalid("campaign %s has unknown kind %q", c.ID, c.Kind)
	}
	if _, ok := kind.(ForwardOnly); ok {
		return nil, fmt.Errorf("%w: %s campaign %s: %w", ErrInvalid, c.Kind, c.ID, ErrNoRollback)
	}
	_, reverts := kind.(Reverter)
	now := s.opts.Now()
	// Devices are rolled back concurrently, rollbackWorkers at a time:
	// a Reverter undoes every finished device too, one durable update
	// and one push each.
	var (
		mu        sync.Mutex
		wg        sync.WaitGroup
		cancelled int
		errs      []error
		sem       = make(chan struct{}, rollbackWorkers)
	)
	earlier := maps.Clone(done) // read here, while the workers add to done
	for i := range c.Devices {
		cd := &c.Devices[i]
		if earlier[cd.ID] {
			cancelled++
			cd.Status, cd.Finished, cd.Detail = store.DeviceCancelled, now, "rolled back"
			continue
		}
		open := cd.Status == store.DeviceInProgress || cd.Status == store.DeviceAway
		if !(open || reverts && cd.Status == store.DeviceSucceeded) || cd.Version == 0 {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok, err := kind.Rollback(ctx, cd.ID, cd.Version, "campaign:"+c.ID)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case ok:
				cancelled++
				done[cd.ID] = true
				cd.Status, cd.Finished, cd.Detail = store.DeviceCancelled, now, "rolled back"
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); errors.Is(err, ErrNoRollback) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, ErrNoRollback)
	} else if err != nil { // keep the campaign as it was: the operator retries
		return nil, fmt.Errorf("campaign: roll back %s: %w", c.ID, err)
	}
	// The devices whose change finished meanwhile: recorded now, since a
	// rolled-back campaign is not observed again.
	s.observe(ctx, c, kind, "campaign:"+c.ID)
	what := "unfinished changes cancelled"
	if reverts {
		what = "changes undone"
	}
	reason := fmt.Sprintf("rolled back by the operator: %d %s", cancelled, what)
	return s.opts.Store.UpdateCampaign(ctx, id, func(cur *store.Campaign) ([]store.Event, error) {
		if !cur.UpdatedAt.Equal(readAt) {
			return nil, fmt.Errorf("%w: %s", errStale, c.ID)
		}
		*cur = *c
		cur.State, cur.Reason, cur.UpdatedAt, cur.RolledBackAt = store.CampaignRolledBack, reason, s.stamp(readAt), now
		return []store.Event{{Action: "campaign-rolled-back", Actor: actor, Detail: "campaign " + c.ID + ": " + reason}}, nil
	})
}

// rollbackWorkers bounds the devices a rollback undoes at once: enough
// for the store's group commits to fill, few enough for the HSM's
// sessions (a data key's push unwraps it there).
const rollbackWorkers = 16

// kindOf returns the Kind that runs c (bound to it, for a Binder), or nil
// for an unknown kind.
func (s *Service) kindOf(c *store.Campaign) Kind {
	k := s.opts.Kinds[c.Kind]
	if b, ok := k.(Binder); ok {
		return b.Bind(c)
	}
	return k
}

// Targets returns how many of c's devices each stage covers, cumulative:
// at least one device per stage, all of them at the last.
func Targets(c *store.Campaign) []int {
	out := make([]int, len(c.Stages))
	n := len(c.Devices)
	for i, f := range c.Stages {
		out[i] = min(n, max(1, int(math.Ceil(f*float64(n)-1e-9))))
		if i > 0 {
			out[i] = max(out[i], out[i-1])
		}
	}
	return out
}
