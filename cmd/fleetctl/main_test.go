package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// fleetctl against a real fleetd, as an operator's script would run it.
func TestFleetctl(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	cred := server.Paths{Dir: f.Config.DataDir}.AdminDir()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := newRoot(&out)
		cmd.SetArgs(append([]string{"--admin", f.AdminAddr(), "--credential", cred}, args...))
		cmd.SetErr(&bytes.Buffer{})
		err := cmd.Execute()
		return out.String(), err
	}
	devDir := filepath.Join(t.TempDir(), "dev-1")

	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		want    []string
	}{
		{"add", []string{"device", "add", "dev-1", "--out", devDir}, "", []string{"dev-1 provisioned"}},
		{"add without --out", []string{"device", "add", "dev-2"}, "--out is required", nil},
		{"add twice", []string{"device", "add", "dev-1", "--out", devDir + "x"}, "409", nil},
		{"devices table", []string{"devices"}, "", []string{"DEVICE", "dev-1"}},
		{"rotate one", []string{"rotate", "dev-1"}, "", []string{"dev-1", "identity", "2", "requested"}},
		{"rotate again while open", []string{"rotate", "dev-1"}, "", []string{"already in progress"}},
		{"rotate without target", []string{"rotate"}, "name devices or --all", nil},
		{"rotate both", []string{"rotate", "dev-1", "--all"}, "name devices or --all", nil},
		{"rotate unknown", []string{"rotate", "ghost"}, "404", nil},
		{"show", []string{"device", "show", "dev-1"}, "", []string{"pending", "active"}},
		{"status", []string{"status"}, "", []string{"devices", "HSM operations"}},
		{"audit verify", []string{"audit", "verify"}, "", []string{"audit chain verified"}},
		{"bad output format", []string{"devices", "-o", "yaml"}, "output format", nil},
		{"anchors show", []string{"anchors", "show"}, "", []string{"version", "1", "keyfleet CA"}},
		{"anchors rotate unknown key", []string{"anchors", "rotate", "--keys", "root"}, "unknown anchor key", nil},
		{"anchors rotate firmware", []string{"anchors", "rotate", "--keys", "firmware"}, "", []string{"version", "2"}},
		{"anchors rotate", []string{"anchors", "rotate"}, "", []string{"version", "3", "keyfleet CA 3"}},
		{"datakeys rotate", []string{"datakeys", "rotate"}, "", []string{"devices", "1"}},
		{"escrow recover without --out", []string{"escrow", "recover", "dev-1", "1"}, "--out is required", nil},
		{"escrow recover bad version", []string{"escrow", "recover", "dev-1", "zero", "--out", "x"}, "want a positive number", nil},
		{"escrow recover unknown version", []string{"escrow", "recover", "dev-1", "9", "--out", filepath.Join(t.TempDir(), "k")}, "404", nil},
		{"firmware publish missing flags", []string{"firmware", "publish", "--version", "2"}, "are required", nil},
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
		})
	}

	t.Run("json for scripts", func(t *testing.T) {
		out, err := run("devices", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var ds []adminapi.DeviceSummary
		if err := json.Unmarshal([]byte(out), &ds); err != nil {
			t.Fatalf("-o json is not JSON: %v\n%s", err, out)
		}
		if len(ds) != 1 || ds[0].ID != "dev-1" || ds[0].Desired != 2 || ds[0].Active != 1 {
			t.Errorf("got %+v, want dev-1 active 1 desired 2", ds)
		}
	})
	t.Run("revoke", func(t *testing.T) {
		for _, tc := range []struct {
			args    []string
			wantErr string
			want    string
		}{
			{[]string{"device", "revoke", "dev-1"}, "--reason is required", ""},
			{[]string{"device", "revoke", "ghost", "--reason", "test"}, "404", ""},
			{[]string{"device", "revoke", "dev-1", "--reason", "lost in transit"}, "", "revoked in"},
			{[]string{"rotate", "dev-1"}, "device dev-1 is revoked", ""},
			{[]string{"devices"}, "", "true"},
		} {
			out, err := run(tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("%v: got error %v, want one containing %q", tc.args, err, tc.wantErr)
				}
				continue
			}
			if err != nil || !strings.Contains(out, tc.want) {
				t.Errorf("%v: got %q, %v; want output containing %q", tc.args, out, err, tc.want)
			}
		}
	})
	t.Run("refused without a credential", func(t *testing.T) {
		var out bytes.Buffer
		cmd := newRoot(&out)
		cmd.SetArgs([]string{"--admin", f.AdminAddr(), "--credential", t.TempDir(), "devices"})
		if err := cmd.Execute(); err == nil {
			t.Fatal("got nil error without an operator credential")
		}
	})
}
