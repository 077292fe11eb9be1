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
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// policy validate works offline (no fleetd listens at --admin): a good
// file exits 0, a bad one exits 1 with every error on its own line as
// file:line: field: message.
func TestPolicyValidateOffline(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		status     int
		stdout     string
		stderr     []string
	}{
		{"good.yaml", "grace: 2d\nrules:\n  - select: model=x\n    max_key_age: 30d\n", exitOK, "good.yaml: valid, 1 rule(s), sha256 ", nil},
		{"empty.yaml", "", exitOK, "empty.yaml: valid, 0 rule(s)", nil},
		{"fleet.yaml", "grace: 2d\ncert_validty: 90d\nrules:\n  - select: model=x\n    max_key_age: 30d\n  - select: model=y\n    schedule:\n      cron: nightly\n      window: 1h\n",
			exitError, "", []string{"fleet.yaml:2: cert_validty: unknown field", "fleet.yaml:8: rules[1].schedule.cron: not a cron expression",
				"fleetctl: fleet.yaml: 2 error(s), not valid"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			status := run([]string{"--admin", "127.0.0.1:1", "--credential", t.TempDir(), "policy", "validate", writeFile(t, tc.name, tc.text)}, &out, &errOut)
			if status != tc.status || !strings.Contains(out.String(), tc.stdout) {
				t.Fatalf("status %d, stdout %q, stderr %q; want %d and %q", status, out.String(), errOut.String(), tc.status, tc.stdout)
			}
			lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
			if len(tc.stderr) > 0 && len(lines) != len(tc.stderr) {
				t.Fatalf("stderr %q, want %d lines", errOut.String(), len(tc.stderr))
			}
			for i, w := range tc.stderr {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("stderr line %d %q, want it to start %q", i, lines[i], w)
				}
			}
		})
	}
}

// diff, apply and show against a running fleetd: diff counts the devices
// each change affects, apply makes the file version 1 (in the table and in
// -o json), show prints it back, and a refused apply exits 1 with each
// error and leaves version 1 running.
func TestPolicyDiffApplyShow(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	f.AddDevice(t, "dev-1")
	f.AddDevice(t, "dev-2")
	good := writeFile(t, "fleet.yaml", "grace: 2d\n")

	out, errOut, status := run("policy", "diff", good)
	if status != exitOK || !strings.Contains(out, "against running version 0: 1 change(s), the policy of 2 of 2 device(s) changes") ||
		!strings.Contains(out, "grace") || !strings.Contains(out, "168h0m0s") || !strings.Contains(out, "48h0m0s") {
		t.Fatalf("diff: status %d\n%s%s", status, out, errOut)
	}
	out, errOut, status = run("-o", "json", "policy", "apply", good)
	var p adminapi.Policy
	if status != exitOK || json.Unmarshal([]byte(out), &p) != nil || p.Version != 1 || p.YAML != "grace: 2d\n" || !strings.HasPrefix(p.AppliedBy, "admin:") {
		t.Fatalf("apply: status %d\n%s%s", status, out, errOut)
	}
	out, _, status = run("policy", "show")
	if status != exitOK || !strings.Contains(out, "version  1") || !strings.Contains(out, p.SHA256) || !strings.Contains(out, "grace: 2d") {
		t.Errorf("show: status %d\n%s", status, out)
	}
	out, _, status = run("policy", "diff", good)
	if status != exitOK || !strings.Contains(out, "against running version 1: 0 change(s)") {
		t.Errorf("diff of the running file: status %d\n%s", status, out)
	}
	_, errOut, status = run("policy", "apply", writeFile(t, "bad.yaml", "grace: 1h\nrules:\n  - select: model=x\n    grace: forever\n"))
	if status != exitError || !strings.Contains(errOut, "bad.yaml:4: rules[0].grace: ") || !strings.Contains(errOut, "bad.yaml: 1 error(s), nothing applied") {
		t.Errorf("bad apply: status %d, stderr %q", status, errOut)
	}
	if out, _, _ = run("-o", "json", "policy", "show"); json.Unmarshal([]byte(out), &p) != nil || p.Version != 1 {
		t.Errorf("after a refused apply: %s, want version 1", out)
	}
}
