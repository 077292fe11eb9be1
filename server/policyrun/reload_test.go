package policyrun

import (
	"context"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/policy"
)

// TestReload: a version applied through another Service on the same store
// (another fleetd process) runs here after Reload, with this process's
// overrides still winning; a Reload with nothing newer, or after this
// Service applied a version itself, changes nothing.
func TestReload(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	here, err := Open(ctx, Options{Store: st, Overrides: policy.Overrides{CertValidity: 48 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	there, err := Open(ctx, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	h := here.Holder()
	changed := h.Changed()
	for _, step := range []struct {
		name    string
		apply   *Service // nil: apply nothing before the reload
		text    string
		want    bool
		version uint64
		grace   time.Duration
	}{
		{name: "nothing stored", want: false, version: 0, grace: 7 * policy.Day},
		{name: "applied elsewhere", apply: there, text: "grace: 1h\n", want: true, version: 1, grace: time.Hour},
		{name: "again", want: false, version: 1, grace: time.Hour},
		{name: "applied here", apply: here, text: "grace: 2h\n", want: false, version: 2, grace: 2 * time.Hour},
		{name: "applied elsewhere again", apply: there, text: "grace: 3h\n", want: true, version: 3, grace: 3 * time.Hour},
	} {
		if step.apply != nil {
			if _, err := step.apply.Apply(ctx, "p.yaml", []byte(step.text), "admin:op"); err != nil {
				t.Fatalf("%s: apply: %v", step.name, err)
			}
		}
		got, err := here.Reload(ctx)
		if err != nil || got != step.want {
			t.Fatalf("%s: reload %v (%v), want %v", step.name, got, err, step.want)
		}
		if v, g := here.Running().Version, h.For("x", nil).Grace.D(); v != step.version || g != step.grace {
			t.Errorf("%s: running v%d with grace %v, want v%d with %v", step.name, v, g, step.version, step.grace)
		}
		if c := h.For("x", nil).CertValidity.D(); c != 48*time.Hour {
			t.Errorf("%s: cert validity %v, want the override's 48h", step.name, c)
		}
	}
	select {
	case <-changed:
	default:
		t.Error("reload did not signal the change")
	}
}
