package schedule

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func device(id, model string, issued time.Time) *store.Device {
	d := &store.Device{ID: id, Model: model}
	d.Slot(protocol.SlotIdentity).Versions = []*store.KeyVersion{{Version: 1, State: lifecycle.StateActive, IssuedAt: issued}}
	return d
}

func running(t *testing.T, version uint64, text string) *policy.Holder {
	t.Helper()
	f, err := policy.ParseFile("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Compile(func(s string) (policy.Matcher, error) { return inventory.ParseSelector(s) }); err != nil {
		t.Fatal(err)
	}
	return policy.NewHolder(&policy.Running{Version: version, File: f}, policy.Overrides{})
}

// TestTick: only devices past their rule's max_key_age, inside its
// schedule, go into a campaign per rule of the rule's shape, created by
// policy:vN; a device in an open scheduled campaign is not taken again.
func TestTick(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, d := range []*store.Device{
		device("x-old", "x", t0.Add(-2*time.Hour)), device("x-new", "x", t0.Add(-time.Minute)),
		device("y-old", "y", t0.Add(-2*time.Hour)), device("z-old", "z", t0.Add(-48*time.Hour)),
	} {
		if err := st.CreateDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	now := t0
	camps := campaign.New(campaign.Options{Store: st, Kinds: map[string]campaign.Kind{campaign.KindIdentity: campaign.Identity{}},
		Now: func() time.Time { return now }})
	h := running(t, 3, `max_key_age: 24h
rules:
  - select: model=x
    max_key_age: 1h
    campaign: {stages: "50%,100%", max_failure: 10%}
  - select: model=y
    max_key_age: 1h
    schedule: {cron: "0 3 * * *", window: 1h}
`)
	s := New(Options{Store: st, Campaigns: camps, Policy: h, Now: func() time.Time { return now }})
	got, err := s.Tick(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var desc []string
	for _, c := range got {
		var ids []string
		for _, d := range c.Devices {
			ids = append(ids, d.ID)
		}
		desc = append(desc, fmt.Sprintf("%s %s %v %v", c.Actor, c.Selector, c.Stages, ids))
	}
	want := "policy:v3  [0.01 0.1 1] [z-old]; policy:v3 model=x [0.5 1] [x-old]"
	if strings.Join(desc, "; ") != want {
		t.Errorf("campaigns %q, want %q (y-old waits for its 03:00 window)", strings.Join(desc, "; "), want)
	}
	if again, err := s.Tick(ctx); err != nil || len(again) != 0 {
		t.Errorf("second look: %d campaigns (%v), want none: its devices are in open scheduled campaigns", len(again), err)
	}
	now = time.Date(2026, 6, 2, 3, 30, 0, 0, time.UTC)
	got, err = s.Tick(ctx)
	var ids []string
	for _, c := range got {
		for _, d := range c.Devices {
			ids = append(ids, c.Selector+":"+d.ID)
		}
	}
	if err != nil || fmt.Sprint(ids) != "[model=x:x-new model=y:y-old]" {
		t.Errorf("inside y's window, x-new past its hour: %v %v, want x-new and y-old, each in its rule's campaign", ids, err)
	}
}

// TestDueJitter: the age limit is stretched by a per-device jitter that
// is the same at every look and spread over the jitter.
func TestDueJitter(t *testing.T) {
	h := running(t, 1, "max_key_age: 10h\njitter: 10h\n")
	eff := h.For("", nil)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for i := range 100 {
		id := fmt.Sprintf("dev-%d", i)
		j := eff.JitterFor(id)
		if j != eff.JitterFor(id) || j < 0 || j >= 10*time.Hour {
			t.Fatalf("jitter of %s: %v", id, j)
		}
		lo, hi = min(lo, j), max(hi, j)
		d := device(id, "", t0)
		if due, _ := Due(d, eff, t0.Add(10*time.Hour+j-time.Second)); due {
			t.Errorf("%s due before its jitter %v", id, j)
		}
		if due, why := Due(d, eff, t0.Add(10*time.Hour+j)); !due || !strings.Contains(why, "max 10h") {
			t.Errorf("%s not due at age limit plus jitter: %q", id, why)
		}
	}
	if hi-lo < 7*time.Hour {
		t.Errorf("jitters spread over %v, want most of 10h", hi-lo)
	}
}

// TestFailedBackoff: a device that failed in a scheduled campaign that
// ended waits FailedBackoff before it is put in another.
func TestFailedBackoff(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateDevice(ctx, device("d1", "", t0.Add(-48*time.Hour))); err != nil {
		t.Fatal(err)
	}
	now := t0
	camps := campaign.New(campaign.Options{Store: st, Kinds: map[string]campaign.Kind{campaign.KindIdentity: campaign.Identity{}},
		Now: func() time.Time { return now }})
	s := New(Options{Store: st, Campaigns: camps, Policy: running(t, 1, "max_key_age: 24h\n"), Now: func() time.Time { return now }})
	got, err := s.Tick(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("first look: %v %v", got, err)
	}
	if _, err := st.UpdateCampaign(ctx, got[0].ID, func(c *store.Campaign) ([]store.Event, error) {
		c.State = store.CampaignCompleted
		c.Devices[0].Status, c.Devices[0].Finished = store.DeviceFailed, now
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after time.Duration
		want  int
	}{{FailedBackoff - time.Minute, 0}, {FailedBackoff, 1}} {
		now = t0.Add(tc.after)
		if got, err := s.Tick(ctx); err != nil || len(got) != tc.want {
			t.Errorf("%v after the failure: %d campaigns (%v), want %d", tc.after, len(got), err, tc.want)
		}
	}
}
