package rotation_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// Several fleetd processes share one store: each has its own engine, and
// what one engine committed must be honoured by the others. These tests run
// a second engine (another process's) on the harness's store.

// peer returns a second engine on h's store, with its own publisher and
// session closer, as another fleetd process would have; issuer, if not
// nil, replaces the CA.
func (h *harness) peer(issuer certs.Issuer) (*rotation.Engine, *sent, *closer) {
	if issuer == nil {
		issuer = h.ca
	}
	out, cl := &sent{}, &closer{}
	e := rotation.New(h.st, issuer, h.keeper, h.codec, rotation.Options{Policy: h.pol, CommandTTL: 30 * 24 * time.Hour,
		Now: h.clk.Now, Anchors: anchorSets{[]byte("v1"), []byte("v2"), []byte("v3"), []byte("v4")}, DataKeys: h.escrow})
	e.SetPublisher(out)
	e.SetSessionCloser(cl)
	return e, out, cl
}

// closer records the sessions the engine asked to drop.
type closer struct {
	mu    sync.Mutex
	calls []string // "device" for Disconnect, "device/serial" for DisconnectCredential
}

func (c *closer) Disconnect(device string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, device)
	return 1
}

func (c *closer) DisconnectCredential(device, serial string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, device+"/"+serial)
	return 1
}

func (c *closer) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

// issuerThen issues with CA, then runs then before returning: the other
// process's work that lands between this one's signing and its commit.
type issuerThen struct {
	ca   certs.Issuer
	then func()
}

func (i issuerThen) Issue(ctx context.Context, req certs.Request) (*x509.Certificate, error) {
	c, err := i.ca.Issue(ctx, req)
	if err == nil && i.then != nil {
		i.then()
	}
	return c, err
}

// TestEnrollTwinResendsCert: the same enroll handled by two processes (a
// QoS 1 redelivery after a worker died, a shared subscription) is committed
// once; the process that loses the race answers with the certificate the
// winner recorded, not with an error, and records nothing.
func TestEnrollTwinResendsCert(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	id, _ := h.device("d1")
	ctx := context.Background()
	m, _ := h.openRotation("d1")
	h.out.take()
	b := h.seal(m, id, "d1")
	peer, peerOut, _ := h.peer(issuerThen{ca: h.ca, then: func() {
		if err := h.e.HandleUplink(ctx, topics.Up("d1"), b); err != nil {
			t.Errorf("enroll on the first process: %v", err)
		}
	}})
	if err := peer.HandleUplink(ctx, topics.Up("d1"), b); err != nil {
		t.Fatalf("enroll on the twin: %v", err)
	}
	first, twin := h.out.take(), peerOut.take()
	if len(certsIn(first)) != 1 || len(certsIn(twin)) != 1 || len(errorsIn(twin)) != 0 || len(twin) != 1 {
		t.Fatalf("answers: first %v, twin %v; want one certificate each and no error", first, twin)
	}
	d, err := h.st.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	v := d.Slot(protocol.SlotIdentity).Version(2)
	if v.State != lifecycle.StateIssued {
		t.Fatalf("v2 is %v, want issued", v.State)
	}
	want, err := protocol.CompactLeaf(v.Cert) // certificates travel without their key
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*protocol.Cert{"first": certsIn(first)[0], "twin": certsIn(twin)[0]} {
		if !bytes.Equal(c.Cert, want) || c.Version != 2 {
			t.Errorf("%s process sent v%d, not the recorded certificate of v2", name, c.Version)
		}
	}
	if got := h.audit("d1"); count(got, "issued/device") != 1 {
		t.Errorf("audit: %v, want one issued record", got)
	}
	if s := peer.Stats(); s.Issued != 0 || s.Resent != 1 {
		t.Errorf("twin's stats: issued %d resent %d, want 0 and 1", s.Issued, s.Resent)
	}
}

// TestSweepGrace: a version activated through one process whose grace
// timer died with it is retired by another process's sweep once its grace
// has ended, once, and its credential's sessions dropped; a version whose
// grace ends within the horizon is put on the sweeping engine's timer.
func TestSweepGrace(t *testing.T) {
	const grace = time.Hour
	h := newHarness(t, policy.Policy{Grace: policy.Duration(grace)})
	ctx := context.Background()
	// The peer runs its grace timer from before the activations, which it
	// never sees; h.e, never started, stands for the process that saw them
	// and died with their timers.
	peer, _, cl := h.peer(nil)
	sweepCtx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); peer.Wait() }()
	if err := peer.Start(sweepCtx); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"d1", "d2"} {
		id, _ := h.device(dev)
		m, k2 := h.openRotation(dev)
		if err := h.uplink(topics.Up(dev), m, id, dev); err != nil {
			t.Fatal(err)
		}
		act := &protocol.Activated{Slot: protocol.SlotIdentity, Version: 2}
		act.RID = m.RID
		if err := h.uplink(topics.Up(dev), act, k2, dev); err != nil {
			t.Fatal(err)
		}
		h.clk.Advance(10 * time.Minute) // d2's grace ends 10 minutes after d1's
	}
	serial := func(dev string) string {
		d, err := h.st.GetDevice(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		return d.Slot(protocol.SlotIdentity).Version(1).Serial
	}
	s1, s2 := serial("d1"), serial("d2")
	h.clk.Advance(grace - 20*time.Minute + time.Second) // d1's grace is over, d2's ends in 10 min
	for i, want := range []int{1, 0} {
		n, err := peer.SweepGrace(ctx, time.Minute)
		if err != nil || n != want {
			t.Fatalf("sweep %d: %d retired (%v), want %d", i, n, err, want)
		}
	}
	if got := cl.take(); !slices.Equal(got, []string{"d1/" + s1}) {
		t.Errorf("sessions dropped: %v, want d1's v1 credential only", got)
	}
	if _, err := peer.SweepGrace(ctx, 15*time.Minute); err != nil { // d2 now on the timer
		t.Fatal(err)
	}
	h.clk.Advance(10 * time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	var got []string
	for time.Now().Before(deadline) && len(got) == 0 {
		got = cl.take()
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Equal(got, []string{"d2/" + s2}) {
		t.Errorf("sessions dropped by the timer: %v, want d2's v1 credential", got)
	}
	for _, dev := range []string{"d1", "d2"} {
		d, err := h.st.GetDevice(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		if st := d.Slot(protocol.SlotIdentity).Version(1).State; st != lifecycle.StateRetired {
			t.Errorf("%s v1 is %v, want retired", dev, st)
		}
		if a := h.audit(dev); count(a, "retired/grace") != 1 {
			t.Errorf("%s audit: %v, want one retired/grace", dev, a)
		}
	}
}

// TestRevokeDropsAgain: revoking a revoked device still reports it as
// already revoked and changes nothing, but drops its sessions again: the
// first drop may have been lost with the process that committed it.
func TestRevokeDropsAgain(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	h.device("d1")
	ctx := context.Background()
	cl := &closer{}
	h.e.SetSessionCloser(cl)
	if _, err := h.e.Revoke(ctx, "d1", "test", "stolen"); err != nil {
		t.Fatal(err)
	}
	audit := len(h.audit("d1"))
	if _, err := h.e.Revoke(ctx, "d1", "test", "again"); !errors.Is(err, rotation.ErrAlreadyRevoked) {
		t.Fatalf("second revoke: %v, want ErrAlreadyRevoked", err)
	}
	if got := cl.take(); !slices.Equal(got, []string{"d1", "d1"}) {
		t.Errorf("sessions dropped: %v, want d1 twice", got)
	}
	if a := h.audit("d1"); len(a) != audit {
		t.Errorf("audit grew on the second revoke: %v", a)
	}
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
