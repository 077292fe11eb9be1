package rotation_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// openRotation opens a rotation of dev's identity and returns its enroll message
// for a new key, unsigned.
func (h *harness) openRotation(dev string) (*protocol.Enroll, *ecdsa.PrivateKey) {
	h.t.Helper()
	r, err := h.e.RequestRotation(context.Background(), dev, "test")
	if err != nil {
		h.t.Fatal(err)
	}
	k, _ := device.NewKey()
	csr, _ := device.CSR(dev, k)
	m := &protocol.Enroll{Slot: protocol.SlotIdentity, Version: r.Version, CSR: csr}
	m.RID = r.RID
	return m, k
}

// certs returns the certificates among msgs.
func certsIn(msgs []published) []*protocol.Cert {
	var out []*protocol.Cert
	for _, p := range msgs {
		if c, ok := p.msg.(*protocol.Cert); ok {
			out = append(out, c)
		}
	}
	return out
}

func errorsIn(msgs []published) []*protocol.Error {
	var out []*protocol.Error
	for _, p := range msgs {
		if e, ok := p.msg.(*protocol.Error); ok {
			out = append(out, e)
		}
	}
	return out
}

// TestDuplicateEnroll: an enroll for a version already issued with the same
// key, redelivered with the same message id or retried with a fresh one, is
// answered with the same certificate again and changes nothing; one with
// another key is refused as already-issued (wire code 5); once the version
// is active, the old bytes are a replay.
func TestDuplicateEnroll(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	id, _ := h.device("d1")
	ctx := context.Background()
	m, k2 := h.openRotation("d1")
	h.out.take()
	first := h.seal(m, id, "d1")
	if err := h.e.HandleUplink(ctx, topics.Up("d1"), first); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	got := certsIn(h.out.take())
	if len(got) != 1 || got[0].Version != 2 {
		t.Fatalf("answer to the enroll: got %v, want the certificate of v2", got)
	}
	cert := got[0].Cert
	before := h.e.Stats()
	audit := len(h.audit("d1"))

	retry := *m
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"same bytes (QoS redelivery)", first},
		{"fresh message id, same key", h.seal(&retry, id, "d1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := h.e.HandleUplink(ctx, topics.Up("d1"), tc.b); err != nil {
				t.Fatalf("got %v, want the certificate again", err)
			}
			out := h.out.take()
			if c := certsIn(out); len(c) != 1 || !bytes.Equal(c[0].Cert, cert) {
				t.Errorf("answer: got %v, want the same certificate once", out)
			}
			if e := errorsIn(out); len(e) != 0 {
				t.Errorf("errors sent: %+v, want none", e)
			}
		})
	}
	after := h.e.Stats()
	if after.Issued != before.Issued || len(after.Rejected) != 0 || after.Resent != before.Resent+2 {
		t.Errorf("stats: issued %d -> %d, rejected %v, resent %d -> %d; want nothing issued or rejected, 2 resent",
			before.Issued, after.Issued, after.Rejected, before.Resent, after.Resent)
	}
	if n := len(h.audit("d1")); n != audit {
		t.Errorf("audit records: got %d, want %d (nothing issued twice)", n, audit)
	}

	t.Run("another key", func(t *testing.T) {
		k3, _ := device.NewKey()
		other := *m
		other.CSR, _ = device.CSR("d1", k3)
		err := h.e.HandleUplink(ctx, topics.Up("d1"), h.seal(&other, id, "d1"))
		if got := rotation.ReasonOf(err); got != rotation.ReasonAlreadyIssued {
			t.Fatalf("got %q (%v), want already-issued", got, err)
		}
		e := errorsIn(h.out.take())
		if len(e) != 1 || e[0].Code != protocol.CodeUnknownVersion || e[0].Detail != "already-issued" {
			t.Errorf("answer: got %+v, want one error, code %d, detail already-issued", e, protocol.CodeUnknownVersion)
		}
	})

	act := &protocol.Activated{Slot: protocol.SlotIdentity, Version: 2}
	act.RID = m.RID
	if err := h.uplink(topics.Up("d1"), act, k2, "d1"); err != nil {
		t.Fatalf("activate: %v", err)
	}
	h.out.take()
	t.Run("same bytes after activation", func(t *testing.T) {
		if got := rotation.ReasonOf(h.e.HandleUplink(ctx, topics.Up("d1"), first)); got != rotation.ReasonReplay {
			t.Errorf("got %q, want replay", got)
		}
	})
}

// TestNotCurrentKeyCode: an enroll signed by a superseded key is refused
// as not-current-key and answered with its own wire code, 11.
func TestNotCurrentKeyCode(t *testing.T) {
	h := newHarness(t, policy.Policy{Grace: policy.Duration(time.Hour)})
	id, _ := h.device("d1")
	m, k2 := h.openRotation("d1")
	if err := h.uplink(topics.Up("d1"), m, id, "d1"); err != nil {
		t.Fatal(err)
	}
	act := &protocol.Activated{Slot: protocol.SlotIdentity, Version: 2}
	act.RID = m.RID
	if err := h.uplink(topics.Up("d1"), act, k2, "d1"); err != nil {
		t.Fatal(err)
	}
	m3, _ := h.openRotation("d1")
	h.out.take()
	err := h.uplink(topics.Up("d1"), m3, id, "d1") // v1, superseded
	if got := rotation.ReasonOf(err); got != rotation.ReasonNotCurrentKey {
		t.Fatalf("got %q (%v), want not-current-key", got, err)
	}
	e := errorsIn(h.out.take())
	if len(e) != 1 || e[0].Code != protocol.CodeNotCurrentKey || protocol.CodeNotCurrentKey != 11 {
		t.Errorf("answer: got %+v, want code 11", e)
	}
}

// TestRotationChanges: a rotation reports each state change once through
// OnStateChange, in order, and audits each with its move's action.
func TestRotationChanges(t *testing.T) {
	h := newHarness(t, policy.Policy{Grace: policy.Duration(time.Hour)})
	id, _ := h.device("d1")
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); h.e.Wait() })
	m, k2 := h.openRotation("d1")
	if err := h.uplink(topics.Up("d1"), m, id, "d1"); err != nil {
		t.Fatal(err)
	}
	act := &protocol.Activated{Slot: protocol.SlotIdentity, Version: 2}
	act.RID = m.RID
	if err := h.uplink(topics.Up("d1"), act, k2, "d1"); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(time.Hour + time.Second)
	deadline := time.Now().Add(5 * time.Second)
	var got []lifecycle.Change
	for time.Now().Before(deadline) && len(got) < 5 {
		got = append(got, h.takeChanges()...)
		time.Sleep(10 * time.Millisecond)
	}
	type move struct {
		v        uint32
		from, to lifecycle.State
		actor    string
	}
	want := []move{
		{2, lifecycle.StateUnknown, lifecycle.StatePending, "test"},
		{2, lifecycle.StatePending, lifecycle.StateIssued, "device"},
		{1, lifecycle.StateActive, lifecycle.StateSuperseded, "device"},
		{2, lifecycle.StateIssued, lifecycle.StateActive, "device"},
		{1, lifecycle.StateSuperseded, lifecycle.StateRetired, "grace"},
	}
	if len(got) != len(want) {
		t.Fatalf("changes: got %+v, want %d", got, len(want))
	}
	for i, w := range want {
		c := got[i]
		if c.Device != "d1" || c.Slot != lifecycle.SlotIdentity || c.Version != w.v || c.From != w.from || c.To != w.to || c.Actor != w.actor {
			t.Errorf("change %d: got %+v, want d1 identity v%d %v -> %v by %s", i, c, w.v, w.from, w.to, w.actor)
		}
	}
	wantAudit := []string{"provisioned/test", "requested/test", "issued/device", "superseded/device", "activated/device", "retired/grace"}
	if a := h.audit("d1"); len(a) != len(wantAudit) {
		t.Errorf("audit: got %v, want %v", a, wantAudit)
	} else {
		for i := range a {
			if a[i] != wantAudit[i] {
				t.Errorf("audit: got %v, want %v", a, wantAudit)
				break
			}
		}
	}
}
