package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const goodFile = `# fleet defaults
cert_validity: 90d
grace: 7d
max_key_age: 60d
jitter: 1h
schedule:
  cron: "0 2 * * *"
  window: 4h
campaign:
  stages: 5%,25%,100%
  max_failure: 2%
rules:
  - select: model=x
    max_key_age: 1h
    grace: 1h
    schedule:
      cron: "* * * * *"
      window: 1m
  - select: site in (a,b),!beta
    renew_before: 0.5
    campaign:
      stages: 100%
      device_timeout: 5m
`

func TestParseFileGood(t *testing.T) {
	f, err := ParseFile("fleet.yaml", []byte(goodFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Rules) != 2 || f.Rules[0].Select != "model=x" || f.Rules[0].Line != 13 || f.Rules[1].Line != 19 {
		t.Fatalf("rules %+v", f.Rules)
	}
	if f.Defaults.Grace.D() != 7*Day || f.Base.MaxKeyAge.D() != 60*Day || f.Base.Schedule.Window != 4*time.Hour {
		t.Errorf("defaults %+v base %+v", f.Defaults, f.Base)
	}
	if c := f.Rules[1].Campaign; len(c.Stages) != 1 || c.DeviceTimeout != 5*time.Minute || c.MaxFailure != 0.02 {
		t.Errorf("rule 1 campaign %+v: want its own stages and timeout, the rest fleetctl's defaults", c)
	}
}

// TestParseFileErrors: every error is reported, each with the file, the
// line and the field path, and none leaves a policy behind.
func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each a full error line
	}{
		{"unknown top-level key", "grase: 1d\n", []string{"fleet.yaml:1: grase: unknown field"}},
		{"two errors, both reported", "grace: soon\ncert_validity: 1m\n", []string{
			`fleet.yaml:1: grace: duration "soon"`, "fleet.yaml:2: cert_validity: 1m0s is under an hour"}},
		{"set twice", "grace: 1d\ngrace: 2d\n", []string{"fleet.yaml:2: grace: set twice"}},
		{"rule field", "rules:\n  - select: model=x\n    grace: -1h\n", []string{"fleet.yaml:3: rules[0].grace: -1h0m0s is negative"}},
		{"third rule's unknown key", "rules:\n  - select: a=b\n    grace: 1h\n  - select: c=d\n    jitter: 1m\n  - select: e=f\n    gracee: 1h\n",
			[]string{"fleet.yaml:7: rules[2].gracee: unknown field", "fleet.yaml:6: rules[2]: sets nothing"}},
		{"rule without selector", "rules:\n  - grace: 1h\n", []string{"fleet.yaml:2: rules[0].select: missing"}},
		{"bad selector", "rules:\n  - select: 'model=x,,'\n    grace: 1h\n", []string{"fleet.yaml:2: rules[0].select: selector"}},
		{"bad cron", "schedule:\n  cron: every night\n  window: 1h\n", []string{"fleet.yaml:2: schedule.cron: not a cron expression"}},
		{"schedule without window", "rules:\n  - select: a=b\n    schedule:\n      cron: '@daily'\n", []string{"fleet.yaml:4: rules[0].schedule.window: missing"}},
		{"bad stages", "campaign:\n  stages: 10%,5%\n", []string{"fleet.yaml:2: campaign.stages:"}},
		{"bad max_failure in a rule", "rules:\n  - select: a=b\n    campaign:\n      max_failure: lots\n",
			[]string{"fleet.yaml:4: rules[0].campaign.max_failure:"}},
		{"renew_before out of range", "rules:\n  - select: a=b\n    renew_before: 1\n", []string{"fleet.yaml:3: rules[0].renew_before:"}},
		{"rules not a list", "rules: {a: b}\n", []string{"fleet.yaml:1: rules: want a list"}},
		{"syntax", "grace: [1\n", []string{"fleet.yaml:1: did not find expected"}},
		{"campaign field not a scalar", "campaign:\n  min_reached: [1]\n  stages: [1%]\n", []string{
			"fleet.yaml:2: campaign.min_reached:", "fleet.yaml:3: campaign.stages: want a string"}},
		{"more than one document", "grace: 1d\n---\ngrace: 2d\n", []string{"fleet.yaml:2: want one YAML document"}},
		{"max_key_age too short", "max_key_age: 10ms\n", []string{"fleet.yaml:1: max_key_age: 10ms is under a second"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("fleet.yaml", []byte(tt.in))
			if f != nil || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseFile = %v, %v; want ErrInvalid and no file", f, err)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %T is not Errors", err)
			}
			if len(es) != len(tt.want) {
				t.Fatalf("%d errors, want %d:\n%v", len(es), len(tt.want), err)
			}
			got := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("errors\n%s\ndo not contain %q", got, w)
				}
			}
		})
	}
}

type labelMatcher map[string]string

func (m labelMatcher) MatchesLabels(model string, labels map[string]string) bool {
	for k, v := range m {
		if k == "model" && model == v || labels[k] == v {
			continue
		}
		return false
	}
	return true
}

func compileFake(t *testing.T, f *File) {
	t.Helper()
	err := f.Compile(func(s string) (Matcher, error) {
		m := labelMatcher{}
		for _, req := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(req, "=")
			if !ok {
				return nil, errors.New("only k=v here")
			}
			m[k] = v
		}
		return m, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestForFirstMatchWins: a device takes the first matching rule's
// settings over the defaults, and the defaults for what it does not set.
func TestForFirstMatchWins(t *testing.T) {
	f, err := ParseFile("p", []byte("grace: 2d\nmax_key_age: 30d\nrules:\n  - select: model=x\n    grace: 1h\n  - select: site=a\n    grace: 3h\n    jitter: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	compileFake(t, f)
	for _, tc := range []struct {
		model  string
		labels map[string]string
		grace  time.Duration
		rule   int
		jitter time.Duration
	}{
		{"x", map[string]string{"site": "a"}, time.Hour, 0, 0},
		{"y", map[string]string{"site": "a"}, 3 * time.Hour, 1, time.Minute},
		{"y", nil, 2 * Day, -1, 0},
	} {
		e := f.For(tc.model, tc.labels)
		if e.Grace.D() != tc.grace || e.Rule != tc.rule || e.Jitter != tc.jitter || e.MaxKeyAge != 30*Day {
			t.Errorf("For(%s, %v) = grace %v rule %d jitter %v max age %v; want %v %d %v 30d", tc.model, tc.labels,
				e.Grace.D(), e.Rule, e.Jitter, e.MaxKeyAge, tc.grace, tc.rule, tc.jitter)
		}
	}
}

func TestScheduleOpen(t *testing.T) {
	f, err := ParseFile("p", []byte("schedule:\n  cron: '0 2 * * *'\n  window: 2h\n"))
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Duration
		open bool
	}{{time.Hour, false}, {2 * time.Hour, true}, {3*time.Hour + 59*time.Minute, true}, {4 * time.Hour, false}, {23 * time.Hour, false}} {
		if got := f.Base.Schedule.Open(day.Add(tc.at)); got != tc.open {
			t.Errorf("open at %v = %v, want %v", tc.at, got, tc.open)
		}
	}
	var none *Schedule
	if !none.Open(day) {
		t.Error("no schedule must mean any time")
	}
}

// TestDiff: each changed field is one change; rules are matched by their
// selector, so an added rule is one change and a changed field in a kept
// rule is another.
func TestDiff(t *testing.T) {
	old, err := ParseFile("a", []byte("grace: 7d\nrules:\n  - select: model=x\n    grace: 1h\n  - select: site=a\n    jitter: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	new, err := ParseFile("b", []byte("grace: 2d\ndata_keys_decrypt: 3\nrules:\n  - select: model=x\n    grace: 2h\n  - select: site=b\n    jitter: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range Diff(old, new) {
		got = append(got, c.Field+": "+c.Old+" -> "+c.New)
	}
	want := []string{"data_keys_decrypt: 2 -> 3", "grace: 168h0m0s -> 48h0m0s", "rules[model=x].grace: 1h0m0s -> 2h0m0s",
		"rules[site=a]: rule removed -> ", "rules[site=b]:  -> rule added"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCheckSelector(t *testing.T) {
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		{"", true}, {"model=x", true}, {"model==x,site!=b", true}, {"site in (a,b),!beta", true}, {"tier notin (gold)", true},
		{"example.com/rack=r1", true}, {"beta", true}, {"model=x,,", false}, {"site in a,b", false}, {"=x", false}, {"a=b c", false},
	} {
		if err := CheckSelector(tc.s); (err == nil) != tc.ok {
			t.Errorf("CheckSelector(%q) = %v, want ok %v", tc.s, err, tc.ok)
		}
	}
}

// TestBuiltinText: version 0's text is a policy file that parses back to
// the same defaults.
func TestBuiltinText(t *testing.T) {
	p := Default()
	p.Grace = Duration(36 * time.Hour)
	r := Builtin(p)
	f, err := ParseFile("built-in", r.File.Text)
	if err != nil {
		t.Fatalf("%v\n%s", err, r.File.Text)
	}
	if f.Defaults != r.File.Defaults || r.Version != 0 {
		t.Errorf("parsed back %+v, want %+v", f.Defaults, r.File.Defaults)
	}
}
