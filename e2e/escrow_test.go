package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// TestEscrowRecover: a data key recovered with fleetctl escrow recover
// decrypts what the device encrypted with it; the release is in the audit
// chain; a device's credential is refused and changes nothing.
func TestEscrowRecover(t *testing.T) {
	bin := binaries(t)
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	dir := f.AddDevice(t, "meter-1")
	agents := runAgents(t, []string{dir}, nil)
	eventually(t, 10*time.Second, "device connected", func() bool { return f.Server.Broker().Connected() >= 2 })
	for v := 1; v <= 2; v++ {
		r, err := f.Admin.RotateDataKeys(ctx)
		if err != nil || r.Devices != 1 {
			t.Fatalf("rotate data keys: %+v, %v", r, err)
		}
		eventually(t, 10*time.Second, "the device holds the new data key", func() bool {
			return agents[0].DataKeys().PrimaryVersion() == uint32(v)
		})
	}
	// The device encrypted a reading with version 1, then moved on to 2.
	aad := []byte("meter-1/readings")
	// (the device's keyset, with version 1 primary again, as it was then)
	then := agents[0].DataKeys()
	if err := then.SetPrimary(1); err != nil {
		t.Fatal(err)
	}
	old, err := then.Encrypt([]byte("reading: 42 kWh"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := datakey.VersionOf(old); v != 1 {
		t.Fatalf("ciphertext version %d", v)
	}

	cred := datadir.Paths{Dir: f.Config.DataDir}.AdminDir()
	out := filepath.Join(t.TempDir(), "key.hex")
	cmd := exec.Command(filepath.Join(bin, "fleetctl"), "--admin", f.Server.AdminAddr(), "--credential", cred,
		"escrow", "recover", "meter-1", "1", "--out", out)
	stdout, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fleetctl escrow recover: %v\n%s", err, stdout)
	}
	hexKey, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(hexKey)))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stdout, bytes.TrimSpace(hexKey)) {
		t.Error("fleetctl printed the key")
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v, %v", fi.Mode(), err)
	}
	pt, err := datakey.Decrypt(key, 1, old, aad)
	if err != nil || string(pt) != "reading: 42 kWh" {
		t.Fatalf("decrypt with the recovered key: %q, %v", pt, err)
	}
	if got := auditActions(t, f.Server.Store(), "meter-1"); !contains(got, "escrow-recovered/admin:admin") {
		t.Errorf("audit lacks the recovery: %v", got)
	}
	n, err := f.Server.Store().VerifyAudit(ctx)
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}

	// A device's credential, dressed as an operator's, is refused.
	thief := t.TempDir()
	for src, dst := range map[string]string{"identity/v1/cert.pem": "admin.pem", "identity/v1/key.pem": "admin.key", "ca.pem": "ca.pem"} {
		b, err := os.ReadFile(filepath.Join(dir, src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(thief, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out2 := filepath.Join(t.TempDir(), "stolen.hex")
	cmd = exec.Command(filepath.Join(bin, "fleetctl"), "--admin", f.Server.AdminAddr(), "--credential", thief,
		"escrow", "recover", "meter-1", "1", "--out", out2)
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("a device credential recovered a key:\n%s", b)
	} else if !strings.Contains(string(b), "403") && !strings.Contains(strings.ToLower(string(b)), "admin") {
		t.Errorf("refusal does not say why: %s", b)
	}
	if _, err := os.Stat(out2); err == nil {
		t.Error("a key file was written for the refused request")
	}
	if n2, _ := f.Server.Store().VerifyAudit(ctx); n2 != n {
		t.Errorf("audit grew from %d to %d records on a refused request", n, n2)
	}
}
