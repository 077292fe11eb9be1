// Package schedule rotates the devices that fall due under the running
// policy, through campaigns fleetd creates itself: an active identity
// older than its rule's max_key_age (plus the device's jitter), or inside
// its renewal window, inside the rule's schedule. Devices due under one
// rule go into one campaign of that rule's shape, created by "policy:vN".
//
// # Caveats
//
// A device in an open scheduled campaign (running, paused, or completed
// while it is still away) is not put in another, so a campaign that
// paused itself holds its devices until the operator aborts or rolls it
// back. A device that failed is due again FailedBackoff after it failed.
package schedule

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// FailedBackoff is how long a device that failed in a scheduled campaign
// waits before it is put in another.
const FailedBackoff = time.Hour

// ActorPrefix starts the actor of every scheduled campaign: "policy:v3".
const ActorPrefix = "policy:"

// Store is what the scheduler reads.
type Store interface {
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
	ForEachCampaign(ctx context.Context, fn func(c *store.Campaign) error) error
}

// Campaigns creates the campaigns; *campaign.Service satisfies it.
type Campaigns interface {
	Create(ctx context.Context, sp campaign.Spec, actor string) (*store.Campaign, error)
}

// Policy is the running policy; *policy.Holder satisfies it.
type Policy interface {
	Running() *policy.Running
	// Changed is closed when the policy changes: the scheduler looks then.
	Changed() <-chan struct{}
}

// Options configures a Scheduler; Store, Campaigns and Policy are required.
type Options struct {
	Store     Store
	Campaigns Campaigns
	Policy    Policy
	// Interval between looks; default one minute.
	Interval time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
}

// Scheduler looks for due devices every Interval.
type Scheduler struct{ opts Options }

// New returns a Scheduler; Run starts it.
func New(opts Options) *Scheduler {
	opts.Interval = cmp.Or(opts.Interval, time.Minute)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	return &Scheduler{opts: opts}
}

// Run looks at once, then every Interval and whenever the policy changes,
// until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		changed := s.opts.Policy.Changed()
		if _, err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.opts.Logger.Warn("policy schedule: look failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
	}
}

// Tick creates a campaign for the devices due now under each rule, and
// returns them.
func (s *Scheduler) Tick(ctx context.Context) ([]*store.Campaign, error) {
	run := s.opts.Policy.Running()
	now := s.opts.Now()
	busy := map[string]bool{}
	if err := s.opts.Store.ForEachCampaign(ctx, func(c *store.Campaign) error {
		if !strings.HasPrefix(c.Actor, ActorPrefix) {
			return nil
		}
		for _, d := range c.Devices {
			switch {
			case c.State == store.CampaignRunning || c.State == store.CampaignPaused:
				busy[d.ID] = true
			case c.State == store.CampaignCompleted && (d.Status == store.DeviceAway || d.Status == store.DeviceInProgress):
				busy[d.ID] = true
			case d.Status == store.DeviceFailed && now.Sub(d.Finished) < FailedBackoff:
				busy[d.ID] = true // not a new campaign every minute for a device that keeps failing
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("policy schedule: campaigns: %w", err)
	}
	type group struct {
		eff     policy.Effective
		devices []string
	}
	due := map[int]*group{}
	if err := s.opts.Store.ForEachDevice(ctx, func(d *store.Device) error {
		if d.Revoked || busy[d.ID] {
			return nil
		}
		eff := run.File.For(d.Model, d.Labels)
		if !eff.Schedule.Open(now) {
			return nil
		}
		if ok, why := Due(d, eff, now); ok {
			g := due[eff.Rule]
			if g == nil {
				g = &group{eff: eff}
				due[eff.Rule] = g
			}
			g.devices = append(g.devices, d.ID)
			s.opts.Logger.Debug("policy schedule: device due", "device", d.ID, "reason", why, "rule", eff.Rule)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("policy schedule: devices: %w", err)
	}
	rules := make([]int, 0, len(due))
	for r := range due {
		rules = append(rules, r)
	}
	sort.Ints(rules)
	actor := fmt.Sprintf("%sv%d", ActorPrefix, run.Version)
	var out []*store.Campaign
	for _, r := range rules {
		g := due[r]
		sh := g.eff.Campaign
		c, err := s.opts.Campaigns.Create(ctx, campaign.Spec{Kind: campaign.KindIdentity, Selector: g.eff.Select,
			Stages: sh.Stages, MaxFailure: sh.MaxFailure, MinReached: min(sh.MinReached, len(g.devices)), Rate: sh.Rate,
			DeviceTimeout: sh.DeviceTimeout, Devices: g.devices}, actor)
		if err != nil {
			return out, fmt.Errorf("policy schedule: rule %d: %w", r, err)
		}
		s.opts.Logger.Info("policy schedule: campaign created", "campaign", c.ID, "devices", len(c.Devices),
			"rule", r, "select", g.eff.Select, "actor", actor)
		out = append(out, c)
	}
	return out, nil
}

// Due reports whether d's active identity must be rotated at now under
// eff, and why: older than MaxKeyAge plus the device's jitter, or inside
// its renewal window (policy.NeedsRenewal, jittered itself). A device
// with a rotation open, or no active identity, is not due.
func Due(d *store.Device, eff policy.Effective, now time.Time) (bool, string) {
	s := d.Slot(protocol.SlotIdentity)
	a := s.Active()
	if a == nil || s.Open() != nil {
		return false, ""
	}
	born := a.IssuedAt
	if born.IsZero() {
		born = a.ActivatedAt
	}
	if eff.MaxKeyAge > 0 && !born.IsZero() && now.Sub(born) >= eff.MaxKeyAge+eff.JitterFor(d.ID) {
		return true, fmt.Sprintf("identity v%d is %v old, max %v", a.Version, now.Sub(born).Round(time.Second), eff.MaxKeyAge)
	}
	if c, err := x509.ParseCertificate(a.Cert); err == nil && a.State == lifecycle.StateActive {
		return eff.NeedsRenewal(d.ID, c.NotBefore, c.NotAfter, now)
	}
	return false, ""
}
