package e2e

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
)

// hotPolicy gives model=x devices a short key age, a schedule that is
// always open, a one-stage campaign and a one-hour grace; everything else
// keeps the built-in defaults (no age limit, 7 days of grace).
const hotPolicy = `# fleet policy
renew_after_expiry: 300d
rules:
  - select: model=x
    max_key_age: 1s
    grace: 1h
    schedule:
      cron: "* * * * *"
      window: 1m
    campaign:
      stages: 100%
      max_failure: 0%
      device_timeout: 1m
`

// A policy applied on a running fleetd changes behaviour without a
// restart: fleetd itself creates a campaign, as policy:v1, that rotates the
// model=x devices (and only them) because their keys are now too old, and
// their superseded keys get the rule's one-hour grace instead of the
// default seven days. An invalid file is refused with every error named
// by file:line and field, and nothing changes.
func TestPolicyHotApply(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	c := f.Admin
	var dirs []string
	for _, d := range []struct{ id, model string }{{"x1", "x"}, {"x2", "x"}, {"y1", "y"}, {"y2", "y"}} {
		dir := filepath.Join(f.Dir, "devices", d.id)
		if _, err := provision.Labelled(ctx, c, d.id, dir, "", provision.Inventory{Model: d.model}); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	runAgents(t, dirs, nil)
	eventually(t, 20*time.Second, "every device connected", func() bool {
		for _, id := range []string{"x1", "x2", "y1", "y2"} {
			if d, err := c.Device(ctx, id); err != nil || d.Connection != adminapi.ConnectionUp {
				return false
			}
		}
		return true
	})
	if p, err := c.Policy(ctx); err != nil || p.Version != 0 {
		t.Fatalf("running policy before any apply: %+v %v, want version 0", p, err)
	}

	d, err := c.PolicyDiff(ctx, adminapi.PolicyRequest{Name: "fleet.yaml", YAML: hotPolicy})
	if err != nil {
		t.Fatal(err)
	}
	affects := map[string]int{}
	for _, ch := range d.Changes {
		affects[ch.Field] = ch.Devices
	}
	if affects["rules[model=x]"] != 2 || affects["renew_after_expiry"] != 4 || d.Devices != 4 || d.Total != 4 {
		t.Errorf("diff %+v: want the rule to affect the 2 model=x devices and renew_after_expiry all 4", d)
	}

	time.Sleep(time.Second) // the keys must be older than the rule's max_key_age
	applied, err := c.ApplyPolicy(ctx, adminapi.PolicyRequest{Name: "fleet.yaml", YAML: hotPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if applied.Version != 1 || applied.YAML != hotPolicy || applied.Rules != 1 {
		t.Fatalf("applied %+v, want version 1 with the file", applied)
	}

	var campaignID string
	eventually(t, 20*time.Second, "a campaign created by policy:v1", func() bool {
		_ = c.ExportAudit(ctx, 0, func(r adminapi.AuditRecord) error {
			if r.Action == "campaign-created" && r.Actor == "policy:v1" {
				campaignID = strings.TrimPrefix(r.Detail, "campaign ")
			}
			return nil
		})
		return campaignID != ""
	})
	camp := waitCampaign(t, c, campaignID, 30*time.Second, "the scheduled campaign to complete",
		func(c adminapi.Campaign) bool { return c.State == adminapi.CampaignStateCompleted })
	if got := statuses(camp); len(got) != 2 || got["x1"] != "succeeded" || got["x2"] != "succeeded" {
		t.Fatalf("scheduled campaign devices %v, want x1 and x2 succeeded", got)
	}
	for _, id := range []string{"x1", "x2"} {
		dev, err := c.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var v1, v2 adminapi.Version
		for _, v := range dev.Versions {
			if v.Slot == "identity" && v.Version == 1 {
				v1 = v
			}
			if v.Slot == "identity" && v.Version == 2 {
				v2 = v
			}
		}
		if v2.State != "active" || v1.State != "superseded" {
			t.Fatalf("%s versions %+v, want v2 active and v1 superseded", id, dev.Versions)
		}
		if g := v1.GraceUntil.Sub(v2.ActivatedAt); g < 59*time.Minute || g > 61*time.Minute {
			t.Errorf("%s: grace of v1 is %v, want the rule's hour (not the default 7 days)", id, g)
		}
	}
	for _, id := range []string{"y1", "y2"} {
		if dev, err := c.Device(ctx, id); err != nil || dev.Active != 1 || len(dev.Versions) != 1 {
			t.Errorf("%s: %+v %v, want untouched at version 1", id, dev.DeviceSummary, err)
		}
	}

	_, err = c.ApplyPolicy(ctx, adminapi.PolicyRequest{Name: "bad.yaml", YAML: "grace: 1h\nrules:\n  - select: model=x\n    max_key_age: soon\n  - select: 'site in (a'\n    gracee: 1h\n"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != adminapi.CodeInvalid {
		t.Fatalf("invalid apply: %v, want 400 invalid", err)
	}
	want := []string{"bad.yaml:4: rules[0].max_key_age: ", "bad.yaml:5: rules[1].select: ", "bad.yaml:5: rules[1]: sets nothing",
		"bad.yaml:6: rules[1].gracee: unknown field"}
	if len(ae.Details) != len(want) {
		t.Fatalf("errors %q, want %d", ae.Details, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(ae.Details[i], w) {
			t.Errorf("error %d %q, want it to start %q", i, ae.Details[i], w)
		}
	}
	if p, err := c.Policy(ctx); err != nil || p.Version != 1 {
		t.Errorf("after a refused apply: %+v %v, want version 1 still running", p, err)
	}
	var applies []string
	_ = c.ExportAudit(ctx, 0, func(r adminapi.AuditRecord) error {
		if r.Action == "policy-applied" {
			applies = append(applies, r.Actor+" "+r.Detail)
		}
		return nil
	})
	if len(applies) != 1 || !strings.HasPrefix(applies[0], "admin:") || !strings.Contains(applies[0], "policy v1 sha256 "+applied.SHA256) {
		t.Errorf("policy-applied records %q, want one for v1 by the operator with its hash", applies)
	}
}
