package policyrun

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

func openStore(t *testing.T) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// fleet makes 3 devices of model x, 4 at site a and 3 others.
func fleet(t *testing.T, st store.Store) {
	t.Helper()
	ctx := context.Background()
	add := func(id, model string, labels map[string]string) {
		if err := st.CreateDevice(ctx, &store.Device{ID: id, Model: model, Labels: labels}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"x1", "x2", "x3"} {
		add(id, "x", nil)
	}
	for _, id := range []string{"a1", "a2", "a3", "a4"} {
		add(id, "y", map[string]string{"site": "a"})
	}
	for _, id := range []string{"o1", "o2", "o3"} {
		add(id, "y", nil)
	}
}

func mustParse(t *testing.T, text string) *policy.File {
	t.Helper()
	f, err := policy.ParseFile("seed.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func auditActions(t *testing.T, st store.Store) []string {
	t.Helper()
	var out []string
	if err := st.ForEachAudit(context.Background(), 0, func(r *store.AuditRecord) error {
		out = append(out, r.Action+" "+r.Actor+" "+r.Detail)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOpenSeedThenStored: --policy seeds version 1 (audited) into an
// empty store; at the next start the stored version runs even when the
// file given differs, and with no file and no store the built-in policy
// runs as version 0.
func TestOpenSeedThenStored(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	s, err := Open(ctx, Options{Store: st, Seed: mustParse(t, "grace: 2d\n")})
	if err != nil {
		t.Fatal(err)
	}
	if r := s.Running(); r.Version != 1 || r.File.Defaults.Grace.D() != 2*policy.Day || r.AppliedBy != "fleetd --policy" {
		t.Fatalf("seeded %+v", r)
	}
	s2, err := Open(ctx, Options{Store: st, Seed: mustParse(t, "grace: 5d\n")})
	if err != nil {
		t.Fatal(err)
	}
	if r := s2.Running(); r.Version != 1 || r.File.Defaults.Grace.D() != 2*policy.Day {
		t.Errorf("restart with another file: running v%d grace %v, want the stored v1 with 48h", r.Version, r.File.Defaults.Grace.D())
	}
	if a := auditActions(t, st); len(a) != 1 || !strings.HasPrefix(a[0], "policy-applied fleetd --policy policy v1 sha256 ") {
		t.Errorf("audit %q, want one policy-applied for v1", a)
	}
	s3, err := Open(ctx, Options{Store: openStore(t), Base: policy.Policy{Grace: policy.Duration(time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if r := s3.Running(); r.Version != 0 || r.File.Defaults.Grace.D() != time.Hour {
		t.Errorf("no file, empty store: %+v, want version 0 with the base policy", r)
	}
}

// TestDiffCounts: each change counts the devices whose effective setting
// it changes, through the selectors over the inventory.
func TestDiffCounts(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	fleet(t, st)
	s, err := Open(ctx, Options{Store: st, Seed: mustParse(t, "grace: 7d\nrules:\n  - select: site=a\n    jitter: 1h\n")})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Diff(ctx, "next.yaml", []byte(`grace: 7d
data_keys_decrypt: 3
rules:
  - select: model=x
    grace: 1h
  - select: site=a
    jitter: 2h
    grace: 1h
`))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, c := range d.Changes {
		got[c.Field] = c.Devices
	}
	want := map[string]int{"data_keys_decrypt": 10, "rules[model=x]": 3, "rules[site=a].jitter": 4, "rules[site=a].grace": 4}
	if len(got) != len(want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s affects %d devices, want %d (all: %v)", k, got[k], n, got)
		}
	}
	if d.Devices != 10 || d.Total != 10 || d.From != 1 {
		t.Errorf("diff from v%d: %d of %d devices change, want from v1 10 of 10", d.From, d.Devices, d.Total)
	}
}

// TestApply: a valid file runs at once as the next version, audited; an
// invalid one is refused with every error and changes nothing.
func TestApply(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	fleet(t, st)
	s, err := Open(ctx, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Holder()
	if g := h.For("x", nil).Grace.D(); g != 7*policy.Day {
		t.Fatalf("built-in grace %v", g)
	}
	changed := h.Changed()
	r, err := s.Apply(ctx, "p.yaml", []byte("rules:\n  - select: model=x\n    grace: 1h\n"), "admin:op")
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != 1 || h.For("x", nil).Grace.D() != time.Hour || h.For("y", nil).Grace.D() != 7*policy.Day {
		t.Errorf("after apply: v%d, x grace %v, y grace %v", r.Version, h.For("x", nil).Grace.D(), h.For("y", nil).Grace.D())
	}
	select {
	case <-changed:
	default:
		t.Error("apply did not signal the change")
	}
	before := len(auditActions(t, st))
	_, err = s.Apply(ctx, "bad.yaml", []byte("grace: soon\nrules:\n  - select: 'model in (x'\n    grace: 1h\n"), "admin:op")
	var es policy.Errors
	if !errors.As(err, &es) || len(es) != 2 || !strings.HasPrefix(es[0].Error(), "bad.yaml:1: grace:") ||
		!strings.HasPrefix(es[1].Error(), "bad.yaml:3: rules[0].select:") {
		t.Fatalf("invalid apply: %v, want both errors", err)
	}
	if s.Running().Version != 1 || len(auditActions(t, st)) != before {
		t.Error("an invalid apply changed the running policy or the audit log")
	}
}

// TestCompileAgreesWithOffline: selectors the offline check accepts,
// fleetd's parser accepts too, and the other way round for these.
func TestCompileAgreesWithOffline(t *testing.T) {
	for _, s := range []string{"model=x", "site in (a,b),!beta", "a!=b", "x", "example.com/rack=r1", "tier notin (gold,silver)",
		"a=b,,", "site in a", "=x", "a b", "a=b=c", "-a=b"} {
		f := &policy.File{Name: "p", Rules: []policy.Rule{{Select: s, Line: 1}}}
		offline, server := policy.CheckSelector(s), Compile(f)
		if (offline == nil) != (server == nil) {
			t.Errorf("selector %q: offline %v, fleetd %v", s, offline, server)
		}
	}
}
