package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
)

func TestParseLabelArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    adminapi.LabelRequest
		wantErr string
	}{
		{[]string{"site=a", "ring-"}, adminapi.LabelRequest{Set: map[string]string{"site": "a"}, Remove: []string{"ring"}}, ""},
		{[]string{"empty="}, adminapi.LabelRequest{Set: map[string]string{"empty": ""}}, ""},
		{[]string{"url=a=b"}, adminapi.LabelRequest{Set: map[string]string{"url": "a=b"}}, ""}, // fleetd refuses the value
		{[]string{"model=x"}, adminapi.LabelRequest{Set: map[string]string{"model": "x"}}, ""},
		{[]string{"site"}, adminapi.LabelRequest{}, `label "site": want KEY=VALUE to set or KEY- to remove`},
		{[]string{"=a"}, adminapi.LabelRequest{}, `label "=a": the key is empty`},
		{[]string{"-"}, adminapi.LabelRequest{}, `label "-": the key is empty`},
		{[]string{"site=a", "site-"}, adminapi.LabelRequest{}, "label site given twice"},
		{[]string{"site=a", "site=b"}, adminapi.LabelRequest{}, "label site given twice"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			got, err := parseLabelArgs(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := parseLabels([]string{"site-"}); err == nil || !strings.Contains(err.Error(), "nothing to remove at registration") {
		t.Errorf("--label site-: got %v, want a refusal", err)
	}
	if got := formatLabels(map[string]string{"site": "a", "beta": ""}); got != "beta=,site=a" {
		t.Errorf("formatLabels = %q", got)
	}
}

// The inventory commands against a real fleetd: add with labels and a
// model, select, relabel, show every slot.
func TestFleetctlInventory(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	cred := datadir.Paths{Dir: f.Config.DataDir}.AdminDir()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := newRoot(&out)
		cmd.SetArgs(append([]string{"--admin", f.AdminAddr(), "--credential", cred}, args...))
		cmd.SetErr(&bytes.Buffer{})
		err := cmd.Execute()
		return out.String(), err
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		want    []string
		lacks   []string
	}{
		{"add labelled", []string{"device", "add", "d1", "--out", filepath.Join(dir, "d1"), "--label", "site=a", "--label", "ring=canary", "--model", "x"}, "", []string{"d1 provisioned"}, nil},
		{"add plain", []string{"device", "add", "d2", "--out", filepath.Join(dir, "d2")}, "", []string{"d2 provisioned"}, nil},
		{"add other", []string{"device", "add", "d3", "--out", filepath.Join(dir, "d3"), "--label", "site=b", "--model", "y"}, "", []string{"d3 provisioned"}, nil},
		{"add bad label", []string{"device", "add", "d4", "--out", filepath.Join(dir, "d4"), "--label", "bad key=v"}, `label key "bad key"`, nil, nil},
		{"add bad model", []string{"device", "add", "d4", "--out", filepath.Join(dir, "d4"), "--model", "a b"}, `label model: value "a b"`, nil, nil},
		{"add malformed label", []string{"device", "add", "d4", "--out", filepath.Join(dir, "d4"), "--label", "site"}, "want KEY=VALUE", nil, nil},
		{"add model twice", []string{"device", "add", "d4", "--out", filepath.Join(dir, "d4"), "--label", "model=a", "--model", "b"}, "disagree", nil, nil},
		{"not registered after a refusal", []string{"device", "show", "d4"}, `device "d4" not found`, nil, nil},
		{"devices table", []string{"devices"}, "", []string{"MODEL", "LABELS", "ring=canary,site=a", "d2"}, nil},
		{"select", []string{"devices", "--selector", "model=x,site in (a,b),!beta"}, "", []string{"d1"}, []string{"d2", "d3"}},
		{"select short", []string{"devices", "-l", "!model"}, "", []string{"d2"}, []string{"d1", "d3"}},
		{"bad selector", []string{"devices", "-l", "site in (a"}, `selector "site in (a": unable to parse requirement`, nil, nil},
		{"label", []string{"device", "label", "d2", "site=a", "model=x"}, "", []string{"model", "x", "site=a"}, nil},
		{"label remove", []string{"device", "label", "d1", "ring-"}, "", []string{"site=a"}, []string{"ring"}},
		{"label bad key", []string{"device", "label", "d1", "Bad Key=v"}, `label key "Bad Key"`, nil, nil},
		{"label malformed", []string{"device", "label", "d1", "site"}, "want KEY=VALUE to set or KEY- to remove", nil, nil},
		{"label nothing", []string{"device", "label", "d1"}, "requires at least 2 arg(s)", nil, nil},
		{"label unknown", []string{"device", "label", "ghost", "a=b"}, `device "ghost" not found`, nil, nil},
		{"select after label", []string{"devices", "-l", "model=x"}, "", []string{"d1", "d2"}, []string{"d3"}},
		{"show", []string{"device", "show", "d1"}, "", []string{"model", "x", "labels", "site=a", "connection", "disconnected",
			"anchors version", "firmware version", "data keys", "last seen", "identity", "active"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.lacks {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
	t.Run("show -o json", func(t *testing.T) {
		out, err := run("device", "show", "d3", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var d adminapi.Device
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("-o json is not JSON: %v\n%s", err, out)
		}
		if d.ID != "d3" || d.Model != "y" || !maps.Equal(d.Labels, map[string]string{"site": "b"}) ||
			d.Connection != adminapi.ConnectionDown || len(d.Versions) != 1 {
			t.Errorf("got %+v, want d3, model y, site=b, disconnected, one identity version", d)
		}
	})
}
