package rotation_test

import (
	"context"
	"testing"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

func TestRevokedDeviceRefused(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	id, birth := h.device("d1")
	if _, err := h.e.Revoke(context.Background(), "d1", "test", "stolen"); err != nil {
		t.Fatal(err)
	}
	k, _ := device.NewKey()
	csr, _ := device.CSR("d1", k)
	re := &protocol.Reenroll{CSR: csr}
	re.RID = protocol.NewID()
	if got := rotation.ReasonOf(h.uplink(topics.Reenroll("d1"), re, birth, "d1")); got != "revoked" {
		t.Errorf("re-enrolment: %q, want revoked", got)
	}
	hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}}
	if got := rotation.ReasonOf(h.uplink(topics.Up("d1"), hello, id, "d1")); got != "revoked" {
		t.Errorf("hello: %q, want revoked", got)
	}
	for _, p := range h.out.take() {
		if protocol.TypeOf(p.msg) != protocol.TypeError {
			t.Errorf("a revoked device was sent %v", protocol.TypeOf(p.msg))
		}
	}
	a := h.audit("d1")
	for _, want := range []string{"revoked/test", "refused/reenroll", "refused/key-recovery"} {
		if !contains(a, want) {
			t.Errorf("audit lacks %s: %v", want, a)
		}
	}
	if _, err := h.e.RequestRotation(context.Background(), "d1", "test"); err == nil {
		t.Error("a rotation was opened for a revoked device")
	}
}
