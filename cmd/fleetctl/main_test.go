package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// fleetctl against a real fleetd, as an operator's script would run it.
func TestFleetctl(t *testing.T) {
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
	devDir := filepath.Join(t.TempDir(), "dev-1")
	existing := filepath.Join(t.TempDir(), "key.hex")
	if err := os.WriteFile(existing, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		want    []string
	}{
		{"add", []string{"device", "add", "dev-1", "--out", devDir}, "", []string{"dev-1 provisioned"}},
		{"add without --out", []string{"device", "add", "dev-2"}, "--out is required", nil},
		{"add twice", []string{"device", "add", "dev-1", "--out", devDir + "x"}, `device "dev-1" already exists`, nil},
		{"devices table", []string{"devices"}, "", []string{"DEVICE", "dev-1"}},
		{"rotate one", []string{"rotate", "dev-1"}, "", []string{"dev-1", "identity", "2", "requested"}},
		{"rotate again while open", []string{"rotate", "dev-1"}, "", []string{"already in progress"}},
		{"rotate without target", []string{"rotate"}, "name devices or --all", nil},
		{"rotate both", []string{"rotate", "dev-1", "--all"}, "name devices or --all", nil},
		{"rotate unknown", []string{"rotate", "ghost"}, `device "ghost" not found`, nil},
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
		{"escrow recover to an existing file", []string{"escrow", "recover", "dev-1", "1", "--out", existing}, "exists", nil},
		{"escrow recover unknown version", []string{"escrow", "recover", "dev-1", "9", "--out", filepath.Join(t.TempDir(), "k")}, "no such data key", nil},
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

	t.Run("existing file untouched", func(t *testing.T) {
		if b, err := os.ReadFile(existing); err != nil || string(b) != "keep\n" {
			t.Errorf("existing --out file now holds %q, %v", b, err)
		}
	})
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
			{[]string{"device", "revoke", "ghost", "--reason", "test"}, `device "ghost" not found`, ""},
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

// A mistyped or unknown subcommand exits non-zero and names the word; a
// correct one without a fleetd to talk to fails on the connection, not on
// the command line.
func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		wantStatus int
		wantStderr string
		wantStdout string
	}{
		{[]string{"device", "shw", "dev-1"}, 1, `fleetctl: unknown command "shw" for "fleetctl device"; did you mean show?`, ""},
		{[]string{"anchors", "rotat"}, 1, `unknown command "rotat" for "fleetctl anchors"`, ""},
		{[]string{"escrow", "recovr"}, 1, `unknown command "recovr" for "fleetctl escrow"`, ""},
		{[]string{"devcies"}, 1, `unknown command "devcies" for "fleetctl"`, ""},
		{[]string{"devices", "extra"}, 1, `unknown command "extra" for "fleetctl devices"`, ""},
		{[]string{"device", "show"}, 1, "accepts 1 arg(s), received 0", ""},
		{[]string{"--version"}, 0, "", "fleetctl "},
		{[]string{"device"}, 0, "", "Available Commands"},
		{[]string{"--help"}, 0, "", "KEYFLEET_CREDENTIAL"},
		{[]string{"--help"}, 0, "", "3 when none failed but some devices were away"},
		{[]string{"rotate", "--help"}, 0, "", "2 when some rotation failed or had not finished at --timeout"},
		{[]string{"rotate", "dev-1", "--wait", "--timeout", "soon"}, 1, `invalid argument "soon" for "--timeout" flag`, ""},
		{[]string{"audit", "list", "--since", "yesterday"}, 1, `--since: "yesterday": want an RFC 3339 time`, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(tc.args, &stdout, &stderr)
			if status != tc.wantStatus || !strings.Contains(stderr.String(), tc.wantStderr) || !strings.Contains(stdout.String(), tc.wantStdout) {
				t.Errorf("got status %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
					status, stdout.String(), stderr.String(), tc.wantStatus, tc.wantStdout, tc.wantStderr)
			}
		})
	}
}

// The connection's defaults are looked up in the documented order: flag,
// environment, make run's ./var/fleetd/admin and the address fleetd
// recorded there, built-in address.
func TestLookup(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	local := filepath.Join(work, localCredential)
	other := filepath.Join(work, "other")
	for _, dir := range []string{local, other} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(local, addressFile), []byte("127.0.0.1:18443\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name               string
		flagAddr, flagCred string
		envAddr, envCred   string
		wantAddr, wantCred string
	}{
		{"make run's fleet", "", "", "", "", "127.0.0.1:18443", localCredential},
		{"flags first", "10.0.0.1:1", other, "10.0.0.2:2", local, "10.0.0.1:1", other},
		{"environment next", "", "", "10.0.0.2:2", other, "10.0.0.2:2", other},
		{"credential from env, no address file", "", "", "", other, defaultAdmin, other},
		{"address from the env credential's file", "", "", "", local, "127.0.0.1:18443", local},
		{"address from env, credential local", "", "", "10.0.0.2:2", "", "10.0.0.2:2", localCredential},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KEYFLEET_ADMIN", tc.envAddr)
			t.Setenv("KEYFLEET_CREDENTIAL", tc.envCred)
			a := &app{addr: tc.flagAddr, cred: tc.flagCred}
			if got := a.credential(); got != tc.wantCred {
				t.Errorf("credential: got %q, want %q", got, tc.wantCred)
			}
			if got := a.address(); got != tc.wantAddr {
				t.Errorf("address: got %q, want %q", got, tc.wantAddr)
			}
		})
	}
}

// A released key goes only into a new file of mode 0600; an existing path,
// a symlink included, is refused and left as it was.
func TestCreateSecret(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "target"), link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		path    string
		wantErr string
	}{
		{"new file", filepath.Join(dir, "key.hex"), ""},
		{"existing file", existing, "exists"},
		{"dangling symlink", link, "exists"},
		{"missing directory", filepath.Join(dir, "no", "key.hex"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := createSecret(tc.path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := s.write([]byte("00ff\n")); err != nil {
				t.Fatal(err)
			}
			s.discard() // after a write: keeps the file
			fi, err := os.Stat(tc.path)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("got %v, %v; want a 0600 file", fi, err)
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "old" {
		t.Errorf("existing file now holds %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "target")); err == nil {
		t.Error("the symlink's target was created")
	}
	t.Run("discarded when not written", func(t *testing.T) {
		path := filepath.Join(dir, "unused")
		s, err := createSecret(path)
		if err != nil {
			t.Fatal(err)
		}
		s.discard()
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("unwritten key file left behind: %v", err)
		}
	})
}

func TestAlreadyRevoked(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&client.APIError{Status: http.StatusConflict, Code: adminapi.CodeAlreadyRevoked, Message: "device already revoked"}, true},
		{fmt.Errorf("revoke: %w", &client.APIError{Status: http.StatusConflict, Code: adminapi.CodeAlreadyRevoked}), true},
		{&client.APIError{Status: http.StatusConflict, Code: adminapi.CodeRevoked}, false}, // another conflict
		{&client.APIError{Status: http.StatusNotFound}, false},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := alreadyRevoked(tc.err); got != tc.want {
			t.Errorf("alreadyRevoked(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
