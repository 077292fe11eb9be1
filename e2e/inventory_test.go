package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/store"
)

// Labels and models through the admin API on a real fleetd: set at
// registration (one by one and in a batch), changed kubectl style, audited,
// kept across a restart, and selected with Kubernetes selectors; bad
// labels and selectors are refused with 400 naming the problem.
func TestInventory(t *testing.T) {
	top := t
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	c := f.Admin
	for _, d := range []struct {
		id  string
		inv provision.Inventory
	}{
		{"dev-a", provision.Inventory{Model: "x", Labels: map[string]string{"site": "a"}}},
		{"dev-b", provision.Inventory{Model: "x", Labels: map[string]string{"site": "b", "beta": ""}}},
		{"dev-c", provision.Inventory{Model: "y", Labels: map[string]string{"site": "c"}}},
		{"dev-d", provision.Inventory{}},
	} {
		if _, err := provision.Labelled(ctx, c, d.id, filepath.Join(f.Dir, "devices", d.id), "", d.inv); err != nil {
			t.Fatal(err)
		}
	}
	// A batch registration records labels too, and refuses a bad one per device.
	batch := adminapi.BatchProvisionRequest{Devices: []adminapi.BatchDevice{
		{ID: "dev-e", CSR: csrDER(t, "dev-e"), Model: "x", Labels: map[string]string{"site": "a", "ring": "canary"}},
		{ID: "dev-f", CSR: csrDER(t, "dev-f"), Labels: map[string]string{"bad key": "v"}},
	}}
	br, err := c.ProvisionBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if br.Results[0].Error != "" || !strings.Contains(br.Results[1].Error, `label key "bad key"`) {
		t.Fatalf("batch results %+v, want dev-e registered and dev-f refused for its label key", br.Results)
	}

	selects := func(t *testing.T, sel string) string {
		t.Helper()
		ds, err := c.SelectDevices(ctx, sel)
		if err != nil {
			t.Fatalf("selector %q: %v", sel, err)
		}
		var ids []string
		for _, d := range ds {
			ids = append(ids, strings.TrimPrefix(d.ID, "dev-"))
		}
		return strings.Join(ids, "")
	}
	for _, tc := range []struct{ sel, want string }{
		{"", "abcde"},
		{"model=x,site in (a,b),!beta", "ae"},
		{"model=x", "abe"},
		{"!model", "d"},
		{"ring=canary", "e"},
		{"site notin (a)", "bcd"},
	} {
		if got := selects(t, tc.sel); got != tc.want {
			t.Errorf("selector %q: got %q, want %q", tc.sel, got, tc.want)
		}
	}

	t.Run("bad selector", func(t *testing.T) {
		for _, sel := range []string{"site in (a", "Bad Key=1", "model=x,,"} {
			_, err := c.SelectDevices(ctx, sel)
			var apiErr *client.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || apiErr.Code != adminapi.CodeInvalid ||
				!strings.Contains(apiErr.Message, `selector "`+sel+`"`) {
				t.Errorf("selector %q: got %v, want 400 invalid naming the selector", sel, err)
			}
		}
	})

	t.Run("label", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			id         string
			req        adminapi.LabelRequest
			wantStatus int
			wantErr    string
			wantLabels map[string]string
			wantModel  string
		}{
			{"set and remove", "dev-b", adminapi.LabelRequest{Set: map[string]string{"site": "a"}, Remove: []string{"beta"}}, 0, "",
				map[string]string{"site": "a"}, "x"},
			{"model", "dev-d", adminapi.LabelRequest{Set: map[string]string{"model": "z", "example.com/ring": "beta"}}, 0, "",
				map[string]string{"example.com/ring": "beta"}, "z"},
			{"clear model", "dev-c", adminapi.LabelRequest{Remove: []string{"model"}}, 0, "", map[string]string{"site": "c"}, ""},
			{"bad key", "dev-a", adminapi.LabelRequest{Set: map[string]string{"-site": "a"}}, http.StatusBadRequest, `label key "-site"`, nil, ""},
			{"bad value", "dev-a", adminapi.LabelRequest{Set: map[string]string{"site": "a b"}}, http.StatusBadRequest, `label site: value "a b"`, nil, ""},
			{"nothing", "dev-a", adminapi.LabelRequest{}, http.StatusBadRequest, "no label to set or remove", nil, ""},
			{"unknown device", "ghost", adminapi.LabelRequest{Set: map[string]string{"a": "b"}}, http.StatusNotFound, `device "ghost" not found`, nil, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d, err := c.Label(ctx, tc.id, tc.req)
				if tc.wantStatus != 0 {
					var apiErr *client.APIError
					if !errors.As(err, &apiErr) || apiErr.Status != tc.wantStatus || !strings.Contains(apiErr.Message, tc.wantErr) {
						t.Fatalf("got %v, want HTTP %d with %q", err, tc.wantStatus, tc.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(d.Labels, tc.wantLabels) || d.Model != tc.wantModel {
					t.Errorf("answer: labels %v model %q, want %v %q", d.Labels, d.Model, tc.wantLabels, tc.wantModel)
				}
			})
		}
		if got := selects(t, "model=x,site in (a,b),!beta"); got != "abe" {
			t.Errorf("after relabelling: got %q, want abe", got)
		}
	})

	t.Run("audited and durable", func(t *testing.T) {
		var details []string
		if err := f.Server.Store().ForEachAudit(ctx, 1, func(r *store.AuditRecord) error {
			if r.Action == inventory.AuditLabelled {
				details = append(details, r.Device+": "+r.Detail)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// Registration with labels (four: dev-d had none; the batch
		// records them in the registration) and the three changes.
		want := []string{"dev-a: model=x site=a", "dev-b: beta= model=x site=b", "dev-c: model=y site=c",
			"dev-b: site=a beta-", "dev-d: example.com/ring=beta model=z", "dev-c: model-"}
		if !slices.Equal(details, want) {
			t.Errorf("audited label changes:\n got %q\nwant %q", details, want)
		}
		if err := f.Server.Close(); err != nil {
			t.Fatal(err)
		}
		f.Restart(top) // the fleet outlives this subtest
		c = f.Admin
		if got := selects(t, "model=x,site in (a,b),!beta"); got != "abe" {
			t.Errorf("after a restart: got %q, want abe", got)
		}
	})

	t.Run("show every slot and the connection", func(t *testing.T) {
		d, err := c.Device(ctx, "dev-a")
		if err != nil {
			t.Fatal(err)
		}
		if d.Connection != adminapi.ConnectionDown || d.Model != "x" || d.Labels["site"] != "a" {
			t.Errorf("before the agent runs: %+v, want disconnected, model x, site=a", d)
		}
		runAgents(t, []string{filepath.Join(f.Dir, "devices", "dev-a")}, nil)
		eventually(t, 10*time.Second, "dev-a connected, reporting its anchors", func() bool {
			d, err = c.Device(ctx, "dev-a")
			return err == nil && d.Connection == adminapi.ConnectionUp && d.Anchors == 1
		})
		for range 2 {
			if _, err := c.RotateDataKeys(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if d, err = c.Device(ctx, "dev-a"); err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, k := range d.DataKeys {
			keys = append(keys, fmt.Sprintf("v%d %s", k.Version, k.Status))
		}
		if want := []string{"v1 decrypt-only", "v2 primary"}; !slices.Equal(keys, want) || len(d.Versions) != 1 || d.Versions[0].State != "active" {
			t.Errorf("device show: data keys %q, identity %+v; want %q and v1 active", keys, d.Versions, want)
		}
		if d.LastSeen.IsZero() || time.Since(d.LastSeen) > time.Minute {
			t.Errorf("last seen %v, want the agent's hello just now", d.LastSeen)
		}
		if d, err = c.Device(ctx, "dev-e"); err != nil || d.Connection != adminapi.ConnectionDown {
			t.Errorf("dev-e, never run: %+v, %v; want disconnected", d, err)
		}
	})
}

// csrDER is a device CSR in DER, as a batch registration carries it.
func csrDER(t *testing.T, id string) []byte {
	t.Helper()
	k, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := device.CSR(id, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
