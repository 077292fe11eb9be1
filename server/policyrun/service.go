package policyrun

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/schedule"
	"github.com/keyfleet/keyfleet/server/store"
)

// ErrNoVersions: the store keeps no policy versions, so none can be applied.
var ErrNoVersions = errors.New("policyrun: this fleetd's store keeps no policy versions")

// Store is what the running policy needs of the store.
type Store interface {
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
}

// Options configures Open. Store is required.
type Options struct {
	Store Store
	// Seed is the file fleetd was started with (--policy), nil for none: it
	// becomes version 1 when the store holds no version. When the store
	// holds one, the stored one runs and a differing seed is only logged:
	// a restart must not undo an audited apply, and the operator's path to
	// change the policy is `fleetctl policy apply`.
	Seed *policy.File
	// Base is the policy run as version 0 when there is neither a stored
	// version nor a seed.
	Base policy.Policy
	// Overrides (fleetd's --grace, --cert-validity) win over every version.
	Overrides policy.Overrides
	// ScheduleInterval is how often the scheduler looks; default a minute.
	ScheduleInterval time.Duration
	Now              func() time.Time
	Logger           *slog.Logger
}

// Service is the running policy and its versions.
type Service struct {
	opts     Options
	versions store.PolicyStore // nil: none kept
	holder   *policy.Holder
	mu       sync.Mutex // serialises applies
}

// Open loads the newest stored version (or seeds version 1 from
// opts.Seed) and returns the service holding it.
func Open(ctx context.Context, opts Options) (*Service, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	s := &Service{opts: opts}
	s.versions, _ = opts.Store.(store.PolicyStore)
	run := policy.Builtin(opts.Base)
	if opts.Seed != nil {
		if err := Compile(opts.Seed); err != nil {
			return nil, err
		}
		run = &policy.Running{File: opts.Seed, AppliedAt: opts.Now(), AppliedBy: "fleetd --policy"}
	}
	if s.versions != nil {
		latest, err := s.versions.LatestPolicy(ctx)
		switch {
		case err == nil:
			f, err := policy.ParseFile(fmt.Sprintf("policy v%d", latest.Version), latest.Text)
			if err == nil {
				err = Compile(f)
			}
			if err != nil {
				return nil, fmt.Errorf("policyrun: stored policy v%d: %w", latest.Version, err)
			}
			if opts.Seed != nil && opts.Seed.SHA256() != latest.SHA256 {
				opts.Logger.Warn("the --policy file differs from the newest applied policy; running the applied one (apply the file with fleetctl policy apply to change it)",
					"file", opts.Seed.Name, "file_sha256", opts.Seed.SHA256(), "version", latest.Version, "sha256", latest.SHA256)
			}
			run = &policy.Running{Version: latest.Version, File: f, AppliedAt: latest.AppliedAt, AppliedBy: latest.Actor}
		case errors.Is(err, store.ErrNotExist) && opts.Seed != nil:
			if run, err = s.store(ctx, opts.Seed, "fleetd --policy"); err != nil {
				return nil, err
			}
		case !errors.Is(err, store.ErrNotExist):
			return nil, fmt.Errorf("policyrun: %w", err)
		}
	}
	s.holder = policy.NewHolder(run, opts.Overrides)
	opts.Logger.Info("policy running", "version", run.Version, "rules", len(run.File.Rules), "applied_by", run.AppliedBy)
	return s, nil
}

// Compile checks f's selectors with fleetd's parser (inventory's), which
// has the last word over the offline check.
func Compile(f *policy.File) error {
	return f.Compile(func(s string) (policy.Matcher, error) { return inventory.ParseSelector(s) })
}

// Scheduler rotates the devices due under the running policy through
// campaigns; Run starts it.
func (s *Service) Scheduler(st schedule.Store, c schedule.Campaigns) *schedule.Scheduler {
	return schedule.New(schedule.Options{Store: st, Campaigns: c, Policy: s.holder, Interval: s.opts.ScheduleInterval,
		Now: s.opts.Now, Logger: s.opts.Logger})
}

// Holder is what the engine, the broker, the escrow and the scheduler read.
func (s *Service) Holder() *policy.Holder { return s.holder }

// Running is the policy in force.
func (s *Service) Running() *policy.Running { return s.holder.Running() }

// Parse reads and compiles a file as apply would; every error wraps
// policy.ErrInvalid and is a policy.Errors.
func Parse(name string, text []byte) (*policy.File, error) {
	f, err := policy.ParseFile(name, text)
	if err != nil {
		return nil, err
	}
	if err := Compile(f); err != nil {
		return nil, err
	}
	return f, nil
}

// Change is a diff line with the devices it affects.
type Change struct {
	policy.Change
	Devices int
}

// Diff is what applying a file would change.
type Diff struct {
	From    uint64 // the running version
	Changes []Change
	// Devices is how many devices' policy changes at all; Total how many
	// devices there are.
	Devices, Total int
}

// Diff compares a file with the running policy, counting for each change
// the devices (not revoked) whose effective setting it changes.
func (s *Service) Diff(ctx context.Context, name string, text []byte) (Diff, error) {
	f, err := Parse(name, text)
	if err != nil {
		return Diff{}, err
	}
	run := s.holder.Running()
	newF := *f
	newF.Defaults = s.opts.Overrides.Apply(newF.Defaults)
	out := Diff{From: run.Version}
	for _, c := range policy.Diff(run.File, &newF) {
		if c.Field == "cert_validity" {
			c.New += " (at the next start: the CA reads it then)"
		}
		out.Changes = append(out.Changes, Change{Change: c})
	}
	err = s.opts.Store.ForEachDevice(ctx, func(d *store.Device) error {
		if d.Revoked {
			return nil
		}
		out.Total++
		before, after := run.File.For(d.Model, d.Labels), newF.For(d.Model, d.Labels)
		if before.String() != after.String() {
			out.Devices++
		}
		for i := range out.Changes {
			if out.Changes[i].Affects(before, after) {
				out.Changes[i].Devices++
			}
		}
		return nil
	})
	if err != nil {
		return Diff{}, fmt.Errorf("policyrun: diff: %w", err)
	}
	return out, nil
}

// Apply makes a file the running policy as the next version, stored and
// audited ("policy-applied", detail "policy vN sha256 HASH"), at once. An
// invalid file changes nothing.
func (s *Service) Apply(ctx context.Context, name string, text []byte, actor string) (*policy.Running, error) {
	f, err := Parse(name, text)
	if err != nil {
		return nil, err
	}
	if s.versions == nil {
		return nil, ErrNoVersions
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run, err := s.store(ctx, f, actor)
	if err != nil {
		return nil, err
	}
	s.holder.Set(run)
	s.opts.Logger.Info("policy applied", "version", run.Version, "sha256", f.SHA256(), "rules", len(f.Rules), "actor", actor)
	return s.holder.Running(), nil
}

// Reload runs the newest stored version if it is newer than the one
// running, and reports whether it changed anything. When several fleetd
// processes share the store, an apply through one of them stores the
// version and runs it there only; the others call Reload (when told, and
// periodically, which is what makes it certain) to run it too. A stored
// version that no longer compiles is an error and the running one stays.
func (s *Service) Reload(ctx context.Context) (bool, error) {
	if s.versions == nil {
		return false, nil
	}
	latest, err := s.versions.LatestPolicy(ctx)
	if errors.Is(err, store.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("policyrun: reload: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if latest.Version <= s.holder.Running().Version {
		return false, nil
	}
	f, err := policy.ParseFile(fmt.Sprintf("policy v%d", latest.Version), latest.Text)
	if err == nil {
		err = Compile(f)
	}
	if err != nil {
		return false, fmt.Errorf("policyrun: reload stored policy v%d: %w", latest.Version, err)
	}
	s.holder.Set(&policy.Running{Version: latest.Version, File: f, AppliedAt: latest.AppliedAt, AppliedBy: latest.Actor})
	s.opts.Logger.Info("policy reloaded", "version", latest.Version, "sha256", latest.SHA256, "rules", len(f.Rules), "applied_by", latest.Actor)
	return true, nil
}

func (s *Service) store(ctx context.Context, f *policy.File, actor string) (*policy.Running, error) {
	v := &store.PolicyVersion{Text: f.Text, SHA256: f.SHA256(), Actor: actor, AppliedAt: s.opts.Now()}
	if err := s.versions.AppendPolicy(ctx, v, store.Event{Action: "policy-applied", Actor: actor}); err != nil {
		return nil, fmt.Errorf("policyrun: apply: %w", err)
	}
	return &policy.Running{Version: v.Version, File: f, AppliedAt: v.AppliedAt, AppliedBy: actor}, nil
}
