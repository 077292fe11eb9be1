package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"gopkg.in/yaml.v3"
)

// Source is where the engine, the broker and the escrow read the policy
// from at each decision, so that an applied policy takes effect without a
// restart. A Policy value is a Source that never changes (tests, the
// simulator); *Holder is the running one.
type Source interface {
	// Current is the fleet-wide policy (the defaults).
	Current() Policy
	// For is the policy of a device with this model and these labels.
	For(model string, labels map[string]string) Effective
}

// Current implements Source: p with its zero fields defaulted.
func (p Policy) Current() Policy { return p.WithDefaults() }

// For implements Source: p for every device.
func (p Policy) For(string, map[string]string) Effective {
	return Effective{Policy: p.WithDefaults(), Campaign: DefaultCampaign(), Rule: -1}
}

// Effective is one device's policy: the defaults with the first matching
// rule's settings over them.
type Effective struct {
	Policy
	MaxKeyAge time.Duration // 0: no age limit
	Jitter    time.Duration
	Schedule  *Schedule // nil: any time
	Campaign  CampaignShape
	// Rule is the index of the rule that selected the device, -1 for none;
	// Select its selector.
	Rule   int
	Select string
}

// JitterFor is the device's share of Jitter: the same for a device every
// time (FNV of its id, as NeedsRenewal's), so that a fleet enrolled on one
// day falls due spread over the jitter rather than in one minute.
func (e Effective) JitterFor(device string) time.Duration {
	h := fnv.New32a()
	h.Write([]byte(device))
	return time.Duration(float64(e.Jitter) * float64(h.Sum32()) / (1 << 32))
}

// Compile matches the rules' selectors with parse (fleetd's selector
// parser, inventory.ParseSelector); errors name the rule's line.
func (f *File) Compile(parse func(string) (Matcher, error)) error {
	var errs Errors
	for i := range f.Rules {
		m, err := parse(f.Rules[i].Select)
		if err != nil {
			errs = append(errs, FieldError{File: f.Name, Line: f.Rules[i].Line, Field: fmt.Sprintf("rules[%d].select", i), Msg: err.Error()})
			continue
		}
		f.Rules[i].match = m
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// For is the policy of a device: first matching rule wins. Rules not
// compiled select no device.
func (f *File) For(model string, labels map[string]string) Effective {
	e := f.base()
	for i, r := range f.Rules {
		if r.match != nil && r.match.MatchesLabels(model, labels) {
			e.apply(r.Settings)
			e.Rule, e.Select = i, r.Select
			break
		}
	}
	return e
}

// base is the policy of a device no rule selects.
func (f *File) base() Effective {
	e := Effective{Policy: f.Defaults, Campaign: DefaultCampaign(), Rule: -1}
	e.apply(f.Base)
	return e
}

func (e *Effective) apply(s Settings) {
	if s.MaxKeyAge != nil {
		e.MaxKeyAge = s.MaxKeyAge.D()
	}
	if s.Grace != nil {
		e.Grace = *s.Grace
	}
	if s.RenewBefore != nil {
		e.RenewBefore = *s.RenewBefore
	}
	if s.Schedule != nil {
		e.Schedule = s.Schedule
	}
	if s.Jitter != nil {
		e.Jitter = s.Jitter.D()
	}
	if s.Campaign != nil {
		e.Campaign = *s.Campaign
	}
}

// SHA256 is the hex SHA-256 of the file's text: what the audit record and
// `policy show` name a version by.
func (f *File) SHA256() string {
	h := sha256.Sum256(f.Text)
	return hex.EncodeToString(h[:])
}

// Running is a policy in force: a compiled file and where it came from.
type Running struct {
	// Version counts applied policies from 1; 0 is the built-in policy
	// (no file applied or given).
	Version   uint64
	File      *File
	AppliedAt time.Time
	AppliedBy string
}

// Holder holds the running policy; safe for concurrent use. Readers take
// the policy at each decision, so Set changes behaviour at once.
type Holder struct {
	cur       atomic.Pointer[Running]
	overrides Overrides
	mu        sync.Mutex
	changed   chan struct{} // closed at the next Set
}

// NewHolder holds r; overrides (fleetd's --grace, --cert-validity) apply
// to the defaults of r and of every policy Set later.
func NewHolder(r *Running, o Overrides) *Holder {
	h := &Holder{overrides: o, changed: make(chan struct{})}
	h.Set(r)
	return h
}

// Set makes r the running policy.
func (h *Holder) Set(r *Running) {
	f := *r.File
	f.Defaults = h.overrides.Apply(f.Defaults)
	r2 := *r
	r2.File = &f
	h.cur.Store(&r2)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.changed != nil {
		close(h.changed)
	}
	h.changed = make(chan struct{})
}

// Changed is closed when the running policy next changes: the scheduler
// looks for due devices at once after an apply.
func (h *Holder) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

// Running is the running policy.
func (h *Holder) Running() *Running { return h.cur.Load() }

// Current implements Source.
func (h *Holder) Current() Policy { return h.cur.Load().File.Defaults }

// For implements Source.
func (h *Holder) For(model string, labels map[string]string) Effective {
	return h.cur.Load().File.For(model, labels)
}

// Overrides are command-line settings that win over every policy's
// defaults; zero fields override nothing.
type Overrides struct {
	Grace        time.Duration
	CertValidity time.Duration
}

// Apply puts o over p.
func (o Overrides) Apply(p Policy) Policy {
	p = p.WithDefaults()
	if o.Grace != 0 {
		p.Grace = Duration(o.Grace)
	}
	if o.CertValidity != 0 {
		p.CertValidity = Duration(o.CertValidity)
	}
	return p
}

// Start is the fleet-wide policy fleetd starts with: f's defaults if a
// file was given, else base, under o.
func (o Overrides) Start(f *File, base Policy) Policy {
	if f != nil {
		base = f.Defaults
	}
	return o.Apply(base)
}

// Builtin is the running policy of a fleetd given no file: version 0,
// its text the defaults as a policy file says them, so that `policy show`
// prints what runs and an operator can start a file from it.
func Builtin(p Policy) *Running {
	p = p.WithDefaults()
	text, err := yaml.Marshal(p)
	if err != nil { // a struct of numbers and durations always marshals
		text = nil
	}
	return &Running{File: &File{Name: "built-in", Text: append([]byte("# built-in defaults\n"), text...), Defaults: p}, AppliedBy: "fleetd"}
}
