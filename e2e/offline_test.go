package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// auditActions returns the audit records of device, as "action/actor".
func auditActions(t *testing.T, st store.Store, dev string) []string {
	t.Helper()
	var out []string
	if err := st.ForEachAudit(context.Background(), 0, func(r *store.AuditRecord) error {
		if r.Device == dev {
			out = append(out, r.Action+"/"+r.Actor)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestRevokedDeviceRefusedEverywhere: a revoked device that returns is
// refused at connect (identity and birth credential alike), at
// re-enrolment and at key recovery, and each refusal is audited; a device
// next to it is untouched.
func TestRevokedDeviceRefusedEverywhere(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	stolen, fine := f.AddDevice(t, "stolen"), f.AddDevice(t, "fine")
	var mu sync.Mutex
	seen := map[device.EventKind]int{}
	agents := runAgents(t, []string{stolen, fine}, func(o *device.Options) {
		o.ReenrollAfter = 100 * time.Millisecond
		o.OnEvent = func(e device.Event) {
			if e.Device == "stolen" {
				mu.Lock()
				seen[e.Kind]++
				mu.Unlock()
			}
		}
	})
	_ = agents
	eventually(t, 10*time.Second, "both devices connected", func() bool {
		return f.Server.Broker().Connected() >= 3 // two devices and fleetd
	})
	resp, err := f.Admin.Revoke(ctx, "stolen", "reported stolen")
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	t.Logf("revoked in %.2f ms", resp.TookMS)

	// At connect: the agent is thrown out and refused, then tries its
	// birth credential, which is refused too.
	count := func(k device.EventKind) int { mu.Lock(); defer mu.Unlock(); return seen[k] }
	eventually(t, 20*time.Second, "identity and birth credential refused", func() bool {
		return count(device.EventRefused) >= 2 && count(device.EventBirthRefuse) >= 1
	})

	// At re-enrolment, past a broker that did not check (an external one
	// with a stale view): the engine refuses a correctly signed request.
	ks, err := device.OpenKeystore(stolen)
	if err != nil {
		t.Fatal(err)
	}
	bkey, _, err := ks.BirthCredential()
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := device.NewKey()
	csr, err := device.CSR("stolen", newKey)
	if err != nil {
		t.Fatal(err)
	}
	codec := protocol.NewCodec()
	re := protocol.Stamp(&protocol.Reenroll{CSR: csr, Anchors: 1}, time.Now(), 0)
	re.RID = protocol.NewID()
	b, err := codec.Seal(re, bkey, "stolen")
	if err != nil {
		t.Fatal(err)
	}
	topics := protocol.Topics{}
	err = f.Server.Engine().HandleUplink(ctx, topics.Reenroll("stolen"), b)
	if got := rotation.ReasonOf(err); got != "revoked" {
		t.Errorf("re-enrolment: got reason %q (%v), want revoked", got, err)
	}
	// At key recovery: a hello, signed with its identity key, asking for
	// its data keys back.
	key, err := ks.Key(ks.State().Active)
	if err != nil {
		t.Fatal(err)
	}
	h := protocol.Stamp(&protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 1}, time.Now(), 0)
	b, err = codec.Seal(h, key, "stolen")
	if err != nil {
		t.Fatal(err)
	}
	err = f.Server.Engine().HandleUplink(ctx, topics.Up("stolen"), b)
	if got := rotation.ReasonOf(err); got != "revoked" {
		t.Errorf("key recovery: got reason %q (%v), want revoked", got, err)
	}

	got := auditActions(t, f.Server.Store(), "stolen")
	for _, want := range []string{"revoked/admin:admin", "refused/connect", "refused/connect-idevid", "refused/reenroll", "refused/key-recovery"} {
		if !contains(got, want) {
			t.Errorf("audit of the revoked device lacks %q; has %v", want, got)
		}
	}
	if _, err := f.Server.Store().VerifyAudit(ctx); err != nil {
		t.Errorf("audit chain: %v", err)
	}
	d, err := f.Server.Store().GetDevice(ctx, "stolen")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range d.Slot(protocol.SlotIdentity).Versions {
		if v.State != lifecycle.StateRevoked {
			t.Errorf("version %d is %v, want revoked", v.Version, v.State)
		}
	}
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"fine"}}); err != nil {
		t.Fatalf("the other device: %v", err)
	}
	eventually(t, 10*time.Second, "the other device rotated", func() bool { return activeVersions(t, f.Admin)["fine"] == 2 })
}

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

	cred := server.Paths{Dir: f.Config.DataDir}.AdminDir()
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

// TestFirmwareRollbackReported: a release whose boot check fails on the
// device rolls back and fleetd keeps seeing the old version; the next good
// release is installed and reported.
func TestFirmwareRollbackReported(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	dir := f.AddDevice(t, "cam-1")
	vendor, class := firmware.UUID{0xa}, firmware.UUID{0xb}
	images := sync.Map{}
	var rolledBack sync.WaitGroup
	rolledBack.Add(1)
	var once sync.Once
	runAgents(t, []string{dir}, func(o *device.Options) {
		o.Firmware = &device.FirmwareOptions{Dir: filepath.Join(t.TempDir(), "fw"),
			Identity: firmware.Identity{VendorID: vendor, ClassID: class, FactoryVersion: 1},
			Fetch: func(_ context.Context, uri string) ([]byte, error) {
				v, _ := images.Load(uri)
				b, _ := v.([]byte)
				return b, nil
			},
			BootCheck: func(m *firmware.Manifest, img []byte) error {
				if bytes.Contains(img, []byte("broken")) {
					return os.ErrInvalid
				}
				return nil
			}}
		o.OnEvent = func(e device.Event) {
			if e.Kind == device.EventRollback {
				once.Do(rolledBack.Done)
			}
		}
	})
	reported := func(v uint32) func() bool {
		return func() bool {
			d, err := f.Server.Store().GetDevice(ctx, "cam-1")
			return err == nil && d.Firmware == v
		}
	}
	eventually(t, 10*time.Second, "factory firmware reported", reported(1))
	publish := func(v uint32, content string) {
		img := []byte(content)
		uri := "test://cam/" + content
		images.Store(uri, img)
		d := sha256.Sum256(img)
		if _, err := f.Admin.PublishFirmware(ctx, adminapi.FirmwareRequest{Vendor: vendor.String(), Class: class.String(),
			Version: v, Digest: d[:], Size: uint64(len(img)), URI: uri}); err != nil {
			t.Fatalf("publish v%d: %v", v, err)
		}
	}
	publish(2, "broken build 2") // retained on the firmware topic: connected devices get it at once
	done := make(chan struct{})
	go func() { rolledBack.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("no rollback")
	}
	time.Sleep(200 * time.Millisecond)
	if !reported(1)() {
		t.Error("fleetd does not see the old version after the rollback")
	}
	publish(3, "good build 3")
	eventually(t, 15*time.Second, "version 3 reported", reported(3))
}

// TestWillRefused: mochi publishes a last will without asking the ACL, so
// a device that set one could write to any topic (a retained broadcast, or
// another device's down topic) by dropping its connection. The broker
// refuses a device's connect that carries a will.
func TestWillRefused(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	dir := f.AddDevice(t, "sneaky")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	o := paho.NewClientOptions().AddBroker("tls://"+f.Server.MQTTAddr()).SetClientID("sneaky").
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"}).
		SetProtocolVersion(4).SetConnectTimeout(5*time.Second).SetAutoReconnect(false).
		SetWill("kf/b/anchors", "junk", 1, true)
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(5 * time.Second)
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("a connect with a will was accepted")
	}
	if got := f.Server.Broker().Denials.Snapshot()["auth:will-not-allowed"]; got != 1 {
		t.Errorf("denials: %v", f.Server.Broker().Denials.Snapshot())
	}
}
