package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/durationflag"
)

// File is a policy file as the operator wrote it: the top-level fields are
// the defaults (a file from before rules existed is all defaults), and
// Rules override some of them for the devices a selector picks.
type File struct {
	// Name is what errors call the file (its base name, or "policy").
	Name string
	// Text is the file as read: what is stored, shown and hashed.
	Text []byte
	// Defaults are the fleet-wide settings, zero fields filled by Default.
	Defaults Policy
	// Base are the per-selector settings at the top level: what a device
	// that no rule selects runs with.
	Base Settings
	// Rules, first match wins: a device takes the settings of the first
	// rule whose selector selects it, the rest from the top level. First
	// match (not most specific) so that the order in the file alone
	// explains a device's policy.
	Rules []Rule
}

// Settings are what a rule may override. A nil field is not set.
type Settings struct {
	// MaxKeyAge: an active identity older than this (plus the device's
	// jitter) is rotated by fleetd's own campaign. Nil or zero: no age limit.
	MaxKeyAge *Duration
	// Grace overrides Policy.Grace.
	Grace *Duration
	// RenewBefore overrides Policy.RenewBefore.
	RenewBefore *float64
	// Schedule says when fleetd may start rotations for due devices; nil:
	// at any time.
	Schedule *Schedule
	// Jitter spreads due devices over this much time, deterministic per
	// device id.
	Jitter *Duration
	// Campaign is the shape of the campaigns fleetd creates for due devices.
	Campaign *CampaignShape
}

// Rule is one per-selector override.
type Rule struct {
	// Select is the label selector (Kubernetes grammar, as `devices
	// --select`).
	Select string
	// Line is where the rule starts in the file.
	Line int
	Settings
	match Matcher
}

// Schedule is a cron expression and a window: rotations may start from
// each time the expression fires until Window has passed. A window rather
// than the bare cron instant because a scheduler that looks once a minute
// (or was restarted) must not miss a night's maintenance slot.
type Schedule struct {
	Cron   string
	Window time.Duration
	expr   cronSchedule
}

// Open reports whether rotations may start at t: some firing f of the
// expression has f <= t < f+Window.
func (s *Schedule) Open(t time.Time) bool {
	if s == nil {
		return true
	}
	next := s.expr.Next(t.Add(-s.Window))
	return !next.IsZero() && !next.After(t)
}

// String is the schedule as written.
func (s *Schedule) String() string {
	if s == nil {
		return "any time"
	}
	return fmt.Sprintf("%q for %v", s.Cron, s.Window)
}

// CampaignShape is the shape of a scheduled campaign, in the words of
// `fleetctl campaign create`.
type CampaignShape struct {
	Stages        []float64
	MaxFailure    float64
	MinReached    int
	Rate          int // devices a minute; 0: no bound
	DeviceTimeout time.Duration
}

// DefaultCampaign is the shape of scheduled campaigns when the file gives
// none: fleetctl campaign create's defaults.
func DefaultCampaign() CampaignShape {
	return CampaignShape{Stages: []float64{0.01, 0.1, 1}, MaxFailure: 0.02, MinReached: 1, Rate: 1000,
		DeviceTimeout: 10 * time.Minute}
}

// String is the shape in fleetctl's words.
func (c CampaignShape) String() string {
	var st []string
	for _, s := range c.Stages {
		st = append(st, strconv.FormatFloat(s*100, 'f', -1, 64)+"%")
	}
	return fmt.Sprintf("stages %s, max failure %s%%, min reached %d, rate %d/min, device timeout %v",
		strings.Join(st, ","), strconv.FormatFloat(c.MaxFailure*100, 'f', -1, 64), c.MinReached, c.Rate, c.DeviceTimeout)
}

// FieldError is one error in a policy file, with where it is.
type FieldError struct {
	File  string
	Line  int
	Field string // the field path: "rules[2].grace"; "" for the file as a whole
	Msg   string
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// Errors are every error found in a file, in file order. It wraps
// ErrInvalid.
type Errors []FieldError

func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (es Errors) Unwrap() error { return ErrInvalid }

// Strings are the errors one per line, for the admin API.
func (es Errors) Strings() []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Error()
	}
	return out
}

// LoadFile reads and checks a policy file; errors name it by base name.
func LoadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return ParseFile(filepath.Base(path), b)
}

// ParseFile reads a policy file and checks it whole: the error, if any, is
// Errors with every problem found, each with its line and field, unknown
// keys included (a typo must not leave a default silently in force).
// Selectors are checked for their grammar only; Compile matches them.
func ParseFile(name string, b []byte) (*File, error) {
	if name == "" {
		name = "policy"
	}
	p := &parser{name: name}
	f := &File{Name: name, Text: bytes.Clone(b)}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		msg := yamlLine.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "")
		p.add(syntaxLine(err), "", "%s", msg)
		return nil, p.errs
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		p.add(max(next.Line, 1), "", "want one YAML document, found another (---)")
	} else if !errors.Is(err, io.EOF) {
		p.add(syntaxLine(err), "", "%s", yamlLine.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), ""))
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root := doc.Content[0]
		if !(root.Kind == yaml.ScalarNode && root.Tag == "!!null") {
			p.top(root, f)
		}
	}
	f.Defaults = f.Defaults.WithDefaults()
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
		return nil, p.errs
	}
	if err := f.Defaults.Validate(); err != nil { // the rules between fields
		return nil, Errors{{File: name, Line: 1, Msg: err.Error()}}
	}
	return f, nil
}

var yamlLine = regexp.MustCompile(`line (\d+): `)

func syntaxLine(err error) int {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 1
}

type parser struct {
	name string
	errs Errors
}

func (p *parser) add(line int, field, format string, args ...any) {
	p.errs = append(p.errs, FieldError{File: p.name, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// fields walks a mapping: every key once, known keys to fn, the rest
// refused.
func (p *parser) fields(n *yaml.Node, path string, known []string, fn func(key string, v *yaml.Node, field string)) {
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, path, "want a mapping of %s", strings.Join(known, ", "))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		switch {
		case seen[k.Value]:
			p.add(k.Line, field, "set twice")
		case !contains(known, k.Value):
			p.add(k.Line, field, "unknown field (known: %s)", strings.Join(known, ", "))
		default:
			fn(k.Value, v, field)
		}
		seen[k.Value] = true
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

var (
	topKeys      = []string{"cert_validity", "renew_before", "grace", "renew_after_expiry", "data_keys_decrypt", "data_key_destroy_after", "max_key_age", "schedule", "jitter", "campaign", "rules"}
	ruleKeys     = []string{"select", "max_key_age", "grace", "renew_before", "schedule", "jitter", "campaign"}
	scheduleKeys = []string{"cron", "window"}
	campaignKeys = []string{"stages", "max_failure", "min_reached", "rate", "device_timeout"}
)

func (p *parser) top(n *yaml.Node, f *File) {
	p.fields(n, "", topKeys, func(key string, v *yaml.Node, field string) {
		d := &f.Defaults
		switch key {
		case "cert_validity":
			if x, ok := p.duration(v, field); ok {
				if x.D() < time.Hour {
					p.add(v.Line, field, "%v is under an hour", x.D())
				}
				d.CertValidity = x
			}
		case "renew_before":
			if x, ok := p.ratio(v, field); ok {
				d.RenewBefore = x
			}
		case "grace":
			if x, ok := p.duration(v, field); ok {
				d.Grace = x
			}
		case "renew_after_expiry":
			if x, ok := p.duration(v, field); ok {
				d.RenewAfterExpiry = x
			}
		case "data_keys_decrypt":
			if x, ok := p.integer(v, field, 0, 16); ok {
				d.DataKeysDecrypt = x
			}
		case "data_key_destroy_after":
			if x, ok := p.duration(v, field); ok {
				d.DataKeyDestroyAfter = x
			}
		case "rules":
			p.rules(v, f)
		default:
			p.setting(key, v, field, &f.Base)
		}
	})
}

func (p *parser) rules(n *yaml.Node, f *File) {
	if n.Kind != yaml.SequenceNode {
		p.add(n.Line, "rules", "want a list of rules")
		return
	}
	for i, rn := range n.Content {
		path := fmt.Sprintf("rules[%d]", i)
		r := Rule{Line: rn.Line}
		hasSelect, sets := false, false
		p.fields(rn, path, ruleKeys, func(key string, v *yaml.Node, field string) {
			if key != "select" {
				sets = true
				p.setting(key, v, field, &r.Settings)
				return
			}
			hasSelect = true
			if v.Kind != yaml.ScalarNode {
				p.add(v.Line, field, "want a label selector string")
				return
			}
			r.Select = v.Value
			if err := CheckSelector(v.Value); err != nil {
				p.add(v.Line, field, "%v", err)
			}
		})
		if rn.Kind == yaml.MappingNode && !hasSelect {
			p.add(rn.Line, path+".select", "missing: a rule needs a selector (\"\" selects every device)")
		}
		if rn.Kind == yaml.MappingNode && !sets {
			p.add(rn.Line, path, "sets nothing")
		}
		f.Rules = append(f.Rules, r)
	}
}

// setting reads one of the per-selector fields into s.
func (p *parser) setting(key string, v *yaml.Node, field string, s *Settings) {
	switch key {
	case "max_key_age":
		if x, ok := p.duration(v, field); ok {
			if x.D() != 0 && x.D() < time.Second {
				p.add(v.Line, field, "%v is under a second", x.D())
			}
			s.MaxKeyAge = &x
		}
	case "grace":
		if x, ok := p.duration(v, field); ok {
			s.Grace = &x
		}
	case "jitter":
		if x, ok := p.duration(v, field); ok {
			s.Jitter = &x
		}
	case "renew_before":
		if x, ok := p.ratio(v, field); ok {
			s.RenewBefore = &x
		}
	case "schedule":
		s.Schedule = p.schedule(v, field)
	case "campaign":
		s.Campaign = p.campaign(v, field)
	}
}

func (p *parser) schedule(n *yaml.Node, path string) *Schedule {
	var s Schedule
	ok := n.Kind == yaml.MappingNode
	var cronLine int
	p.fields(n, path, scheduleKeys, func(key string, v *yaml.Node, field string) {
		switch key {
		case "cron":
			cronLine = v.Line
			expr, err := parseCron(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil {
				p.add(v.Line, field, "not a cron expression (5 fields, or @daily, @every 1h...): %v", err)
				ok = false
				return
			}
			s.Cron, s.expr = v.Value, expr
		case "window":
			x, good := p.duration(v, field)
			if good && x.D() < time.Minute {
				p.add(v.Line, field, "%v is under a minute: the scheduler looks once a minute", x.D())
				good = false
			}
			ok = ok && good
			s.Window = x.D()
		}
	})
	if n.Kind == yaml.MappingNode {
		if cronLine == 0 {
			p.add(n.Line, path+".cron", "missing")
			ok = false
		}
		if s.Window == 0 && ok {
			p.add(n.Line, path+".window", "missing: how long after each firing rotations may start")
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return &s
}

func (p *parser) campaign(n *yaml.Node, path string) *CampaignShape {
	c := DefaultCampaign()
	p.fields(n, path, campaignKeys, func(key string, v *yaml.Node, field string) {
		var err error
		switch key {
		case "min_reached":
			c.MinReached, _ = p.integer(v, field, 0, 1<<30)
			return
		case "device_timeout":
			x, ok := p.duration(v, field)
			if ok && x <= 0 {
				p.add(v.Line, field, "must be positive")
			}
			c.DeviceTimeout = x.D()
			return
		}
		if v.Kind != yaml.ScalarNode {
			p.add(v.Line, field, "want a string like fleetctl campaign create's flag")
			return
		}
		switch key {
		case "stages":
			c.Stages, err = adminapi.ParseStages(v.Value)
		case "max_failure":
			c.MaxFailure, err = adminapi.ParsePercent(v.Value)
		case "rate":
			c.Rate, err = adminapi.ParseRate(v.Value)
		}
		if err != nil {
			p.add(v.Line, field, "%v", err)
		}
	})
	return &c
}

func (p *parser) duration(v *yaml.Node, field string) (Duration, bool) {
	if v.Kind != yaml.ScalarNode {
		p.add(v.Line, field, "want a duration (720h, 30d)")
		return 0, false
	}
	d, err := durationflag.Parse(v.Value)
	if err != nil {
		p.add(v.Line, field, "%v", err)
		return 0, false
	}
	if d < 0 {
		p.add(v.Line, field, "%v is negative", d)
		return 0, false
	}
	return Duration(d), true
}

func (p *parser) ratio(v *yaml.Node, field string) (float64, bool) {
	x, err := strconv.ParseFloat(v.Value, 64)
	if v.Kind != yaml.ScalarNode || err != nil || !(x > 0 && x < 1) {
		p.add(v.Line, field, "%q must be a number strictly between 0 and 1", v.Value)
		return 0, false
	}
	return x, true
}

func (p *parser) integer(v *yaml.Node, field string, lo, hi int) (int, bool) {
	x, err := strconv.Atoi(v.Value)
	if v.Kind != yaml.ScalarNode || err != nil || x < lo || x > hi {
		p.add(v.Line, field, "%q must be a whole number from %d to %d", v.Value, lo, hi)
		return 0, false
	}
	return x, true
}
