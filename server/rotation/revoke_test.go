package rotation_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
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

// TestRevokeTwice: revoking a revoked device changes nothing and says so,
// with the time of the first revocation.
func TestRevokeTwice(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	h.device("d1")
	ctx := context.Background()
	at := h.clk.Now()
	if _, err := h.e.Revoke(ctx, "d1", "test", "stolen"); err != nil {
		t.Fatal(err)
	}
	changes := h.takeChanges()
	if len(changes) != 1 || changes[0].To != lifecycle.StateRevoked || changes[0].Version != 1 || changes[0].Actor != "test" {
		t.Errorf("changes: got %+v, want v1 revoked by test", changes)
	}
	audit := h.audit("d1")
	h.clk.Advance(time.Hour)
	_, err := h.e.Revoke(ctx, "d1", "test", "again")
	var already *rotation.AlreadyRevokedError
	if !errors.Is(err, rotation.ErrAlreadyRevoked) || !errors.Is(err, rotation.ErrRevoked) || !errors.As(err, &already) {
		t.Fatalf("second revoke: got %v, want an *AlreadyRevokedError", err)
	}
	if !already.At.Equal(at) || already.Device != "d1" {
		t.Errorf("already revoked: got %s at %v, want d1 at %v", already.Device, already.At, at)
	}
	if want := "rotation: device d1 was already revoked at " + at.UTC().Format(time.RFC3339); err.Error() != want {
		t.Errorf("message: got %q, want %q", err, want)
	}
	if a := h.audit("d1"); len(a) != len(audit) {
		t.Errorf("audit after the second revoke: got %v, want %v", a, audit)
	}
	if c := h.takeChanges(); len(c) != 0 {
		t.Errorf("changes after the second revoke: got %+v, want none", c)
	}
}

// TestRevokedErrors: what a revoked device's requests and credentials get
// says so once, naming the device, and matches the broker's refusal.
func TestRevokedErrors(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	h.device("d1")
	ctx := context.Background()
	if _, err := h.e.Revoke(ctx, "d1", "test", "stolen"); err != nil {
		t.Fatal(err)
	}
	_, err := h.e.RequestRotation(ctx, "d1", "test")
	if !errors.Is(err, rotation.ErrRevoked) || err.Error() != "rotation: device d1 is revoked" {
		t.Errorf("rotate a revoked device: got %q, want %q (ErrRevoked)", err, "rotation: device d1 is revoked")
	}
	d, err := h.st.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(d.Slot(protocol.SlotIdentity).Version(1).Cert)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		id   identity.Identity
		want string
	}{
		{"revoked", identity.Identity{Role: identity.RoleDevice, Name: "d1"}, "rotation: device d1 is revoked"},
		{"unknown", identity.Identity{Role: identity.RoleDevice, Name: "ghost"}, "rotation: credential refused: no device ghost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.e.CheckCredential(ctx, tc.id, leaf)
			if !errors.Is(err, lifecycle.ErrNotAccepted) || err.Error() != tc.want {
				t.Errorf("got %q, want %q (lifecycle.ErrNotAccepted)", err, tc.want)
			}
		})
	}
}
