package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/protocol"
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
