//go:build cgo

package e2e

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/device/hwkeys"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/swtpm"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// A real fleet-agent keeps its keys in a TPM 2.0: Debian's swtpm behind
// the real tpm2-pkcs11 module, the stack of a board with a TPM but for
// /dev/tpmrm0. The device is provisioned with its first identity key and
// its birth key generated in the TPM, starts with an orphan key in the
// token (what a crash between a key's generation and the state naming it
// leaves), rotates twice (the agent SIGKILLed in the first right after
// its new key was made), and the test reads every key object back through
// PKCS#11: generated in the token, sensitive, not extractable, the orphan
// and the retired version destroyed, and no private key in any file of the
// agent's directory.
func TestAgentKeysInTPM(t *testing.T) {
	bin := binaries(t)
	began := time.Now() // the binaries are built once for every test
	defer func() {
		t.Logf("provisioning, two rotations and the read-back: %v", time.Since(began).Round(time.Millisecond))
	}()
	tpm, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tpm.Stop)
	for _, kv := range tpm.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if err := tpm.InitToken("agent", "tpm-so-pin", "tpm-user-pin"); err != nil {
		t.Fatalf("init the TPM token: %v", err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("tpm-user-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "pkcs11:token=agent;object=fleet-agent?module-path=" + tpm.Module + "&pin-source=file:" + pinFile

	f := fleettest.StartFleet(t, func(c *server.Config) { c.Grace = time.Hour })
	ctx := context.Background()
	const id = "tpm-1"
	dir := filepath.Join(f.Dir, "devices", id)
	// The factory station makes the first identity and birth keys in the
	// device's TPM. The processes take the TPM one at a time: swtpm serves
	// one connection, as a TPM without a resource manager does.
	cred := datadir.Paths{Dir: f.Config.DataDir}.AdminDir()
	add := exec.Command(filepath.Join(bin, "fleetctl"), "--admin", f.Server.AdminAddr(), "--credential", cred,
		"device", "add", id, "--out", dir, "--key-store", uri)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("fleetctl device add --key-store: %v\n%s", err, out)
	}
	hw, err := hwkeys.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	orphan, _, err := hw.Generate("identity/v2")
	if err != nil {
		t.Fatal(err)
	}
	if err := hw.Close(); err != nil {
		t.Fatal(err)
	}

	agentBin := filepath.Join(bin, "fleet-agent")
	args := []string{"--dir", dir, "--key-store", uri, "--log-level", "debug"}
	rotate := func() {
		t.Helper()
		if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}
	complete := func(v uint32, began time.Time) {
		t.Helper()
		eventually(t, 30*time.Second, "rotation complete", func() bool {
			d, err := f.Admin.Device(ctx, id)
			return err == nil && d.Active == v && d.Reported == v
		})
		t.Logf("rotation to v%d with the key generated in the TPM: %v", v, time.Since(began).Round(time.Millisecond))
	}
	// The first agent is SIGKILLed right after it generated v2's key in
	// the TPM and recorded it as pending: the restarted agent completes
	// the rotation with that same key.
	agent := start(t, nil, agentBin, append(args, "--crash-at", "after-pending-key")...)
	eventually(t, 20*time.Second, "agent connected with its TPM key", func() bool {
		d, err := f.Admin.Device(ctx, id)
		return err == nil && d.Reported == 1
	})
	rotBegan := time.Now()
	rotate()
	if err := agent.wait(t, 20*time.Second); !killedBySIGKILL(err) {
		t.Fatalf("agent exit: got %v, want killed by SIGKILL after the pending key", err)
	}
	pendingRef, err := os.ReadFile(filepath.Join(dir, "identity", "v2", "key.ref"))
	if err != nil {
		t.Fatalf("after the crash: %v", err)
	}
	agent = start(t, nil, agentBin, args...)
	complete(2, rotBegan)
	rotBegan = time.Now()
	rotate()
	complete(3, rotBegan)
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := agent.wait(t, 10*time.Second); err != nil {
		t.Fatalf("agent did not stop cleanly: %v", err)
	}

	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s := ks.State(); s.Active != 3 || s.Previous != 2 || s.Pending != 0 {
		t.Errorf("keystore state %+v, want active 3, previous 2", s)
	}
	hw, err = hwkeys.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer hw.Close()
	keys, err := hw.Keys()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, k := range keys {
		labels = append(labels, k.Label)
		if !k.Sensitive || k.Extractable || !k.Local {
			t.Errorf("key %s: sensitive %v, extractable %v, generated in the token %v; want true, false, true",
				k.Label, k.Sensitive, k.Extractable, k.Local)
		}
		if k.Ref == orphan {
			t.Errorf("the orphan key %s is still in the token", k.Label)
		}
	}
	slices.Sort(labels)
	want := []string{"fleet-agent/birth", "fleet-agent/identity/v2", "fleet-agent/identity/v3"}
	if !slices.Equal(labels, want) {
		t.Errorf("keys in the token: got %q, want %q (v1 retired and destroyed, the orphan swept)", labels, want)
	}
	if ref, err := os.ReadFile(filepath.Join(dir, "identity", "v2", "key.ref")); err != nil || !bytes.Equal(ref, pendingRef) {
		t.Errorf("v2's key: got reference %q (%v), want %q, the key generated before the crash", ref, err, pendingRef)
	}
	for _, v := range []uint32{2, 3} {
		if _, err := ks.Key(v); !errors.Is(err, device.ErrKeyInHardware) {
			t.Errorf("v%d: Key: got %v, want ErrKeyInHardware", v, err)
		}
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
