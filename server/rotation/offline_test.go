package rotation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/clock"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/online"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// The engine's decisions for returning devices, driven through
// HandleUplink with a real bbolt store, a real CA and real escrow (software
// key custody). What the engine publishes is captured by sent, which stands
// in for the MQTT connection: these tests are about what the engine says,
// in what order, not about delivery (e2e covers that).

type sent struct {
	mu   sync.Mutex
	msgs []published
}

type published struct {
	topic string
	msg   protocol.Message
}

func (s *sent) Publish(_ context.Context, topic string, payload []byte) error {
	c := protocol.NewCodec()
	env, err := c.Open(payload)
	if err != nil {
		return err
	}
	m, err := c.Decode(env.Payload) // signatures are checked by the device tests
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, published{topic, m})
	s.mu.Unlock()
	return nil
}

func (s *sent) take() []published {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.msgs
	s.msgs = nil
	return out
}

func (s *sent) types() []protocol.Type {
	var out []protocol.Type
	for _, p := range s.take() {
		out = append(out, protocol.TypeOf(p.msg))
	}
	return out
}

// anchorSets is a fixed anchor chain of n versions: the engine only
// forwards sets, it does not read them.
type anchorSets [][]byte

func (a anchorSets) AnchorVersion() uint32 { return uint32(len(a)) }
func (a anchorSets) SetsAfter(v uint32, max int) [][]byte {
	var out [][]byte
	for i := int(v); i < len(a) && len(out) < max; i++ {
		out = append(out, a[i])
	}
	return out
}

type harness struct {
	t      *testing.T
	clk    *clock.Sim
	st     *store.Bolt
	ca     *certs.CA
	birth  *certs.CA
	e      *rotation.Engine
	out    *sent
	codec  *protocol.Codec
	escrow *escrow.Escrow
}

func newHarness(t *testing.T, pol policy.Policy) *harness {
	t.Helper()
	dir := t.TempDir()
	clk := clock.NewSim(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(label, name string, validity time.Duration) *certs.CA {
		k, err := keys.GenerateP256(label)
		if err != nil {
			t.Fatal(err)
		}
		root, err := certs.NewRoot(k, name, clk.Now(), 10*365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := certs.NewCA(root, k, certs.CAOptions{Validity: validity, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	pol = pol.WithDefaults()
	h := &harness{t: t, clk: clk, codec: protocol.NewCodec(), out: &sent{}}
	h.ca = mk("ca", "fleet", pol.CertValidity.D())
	h.birth = mk("birth", "factory", 20*365*24*time.Hour)
	upd, err := keys.GenerateP256("update")
	if err != nil {
		t.Fatal(err)
	}
	keeper, err := online.NewKeeper(h.codec, upd, clk.Now(), 1000*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if h.st, err = store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.st.Close() })
	if h.escrow, err = escrow.New(keys, h.st, pol, clk.Now); err != nil {
		t.Fatal(err)
	}
	h.e = rotation.New(h.st, h.ca, keeper, h.codec, rotation.Options{Policy: pol, CommandTTL: 30 * 24 * time.Hour,
		Now: clk.Now, Anchors: anchorSets{[]byte("v1"), []byte("v2"), []byte("v3"), []byte("v4")}, DataKeys: h.escrow})
	h.e.SetPublisher(h.out)
	return h
}

// device provisions id with an identity and a birth credential and
// returns their keys.
func (h *harness) device(id string) (identity, birth *ecdsa.PrivateKey) {
	h.t.Helper()
	identity, _ = device.NewKey()
	birth, _ = device.NewKey()
	csrDER, _ := device.CSR(id, identity)
	csr, _ := x509.ParseCertificateRequest(csrDER)
	bc, err := h.birth.Issue(context.Background(), certs.Request{Identity: certs.Identity{Role: certs.RoleIDevID, Name: id}, PublicKey: &birth.PublicKey})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.e.Provision(context.Background(), id, csr, bc, "test"); err != nil {
		h.t.Fatal(err)
	}
	return identity, birth
}

func (h *harness) uplink(topic string, m protocol.Message, key *ecdsa.PrivateKey, device string) error {
	h.t.Helper()
	b, err := h.codec.Seal(protocol.Stamp(m, h.clk.Now(), 0), key, device)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.e.HandleUplink(context.Background(), topic, b)
}

func (h *harness) audit(dev string) []string {
	var out []string
	_ = h.st.ForEachAudit(context.Background(), 0, func(r *store.AuditRecord) error {
		if r.Device == dev {
			out = append(out, r.Action+"/"+r.Actor)
		}
		return nil
	})
	return out
}

var topics protocol.Topics

func TestReenroll(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	_, birth := h.device("d1")
	newKey, _ := device.NewKey()
	csr, _ := device.CSR("d1", newKey)
	re := &protocol.Reenroll{CSR: csr, Anchors: 2}
	re.RID = protocol.NewID()
	if err := h.uplink(topics.Reenroll("d1"), re, birth, "d1"); err != nil {
		t.Fatalf("re-enrol: %v", err)
	}
	got := h.out.take()
	if len(got) != 2 || protocol.TypeOf(got[0].msg) != protocol.TypeAnchors || protocol.TypeOf(got[1].msg) != protocol.TypeCert {
		t.Fatalf("answer: %+v, want anchors then cert", got)
	}
	for _, p := range got {
		if p.topic != topics.ReenrollDown("d1") {
			t.Errorf("answer on %s, want the re-enrolment topic", p.topic)
		}
	}
	if sets := got[0].msg.(*protocol.Anchors).Sets; len(sets) != 2 || string(sets[0]) != "v3" {
		t.Errorf("anchor sets after v2: %q, want v3 and v4", sets)
	}
	cert := got[1].msg.(*protocol.Cert)
	if cert.Version != 2 {
		t.Errorf("re-enrolled version %d, want 2", cert.Version)
	}
	// The delivery leaves out the key the device sent; the device puts it back.
	der, err := protocol.ExpandLeaf(cert.Cert, &newKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(h.ca.Certificate()); err != nil {
		t.Errorf("certificate is not the CA's for the CSR's key: %v", err)
	}
	if !newKey.PublicKey.Equal(c.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	// The answer was lost: the same key again gets the same certificate.
	re2 := &protocol.Reenroll{CSR: csr}
	re2.RID = protocol.NewID()
	if err := h.uplink(topics.Reenroll("d1"), re2, birth, "d1"); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if got := h.out.take(); len(got) == 0 || string(got[len(got)-1].msg.(*protocol.Cert).Cert) != string(cert.Cert) {
		t.Error("a repeated re-enrolment did not get the same certificate")
	}
	if a := h.audit("d1"); !contains(a, "reenrolled/device:idevid") {
		t.Errorf("audit: %v", a)
	}

	tests := []struct {
		name   string
		key    func() *ecdsa.PrivateKey
		reason string
	}{
		{"signed by another key", func() *ecdsa.PrivateKey { k, _ := device.NewKey(); return k }, "unknown-key"},
		{"signed by the identity key", func() *ecdsa.PrivateKey { return newKey }, "unknown-key"},
		{"another key while the first re-enrolment is open", func() *ecdsa.PrivateKey { return birth }, "reenroll-too-soon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k2, _ := device.NewKey()
			csr2, _ := device.CSR("d1", k2)
			m := &protocol.Reenroll{CSR: csr2}
			m.RID = protocol.NewID()
			err := h.uplink(topics.Reenroll("d1"), m, tt.key(), "d1")
			if got := rotation.ReasonOf(err); got != tt.reason {
				t.Errorf("got %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
}

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

// TestRenewalWindows: fleetd rotates a device that says hello in the last
// third of its certificate's life, and one whose certificate expired within
// the policy's window (it may still sign uplinks); past the window, its key
// is no longer accepted.
func TestRenewalWindows(t *testing.T) {
	day := 24 * time.Hour
	pol := policy.Policy{CertValidity: policy.Duration(90 * day), RenewAfterExpiry: policy.Duration(100 * day)}
	tests := []struct {
		name   string
		after  time.Duration
		rotate bool
		reason string
	}{
		{"fresh certificate", 10 * day, false, ""},
		{"inside the renewal third", 80 * day, true, ""},
		{"expired 50 days ago", 140 * day, true, ""},
		{"expired 150 days ago", 240 * day, false, "key-not-accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pol)
			id, _ := h.device("d1")
			h.clk.Advance(tt.after)
			hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 4,
				Delegation: nil}
			err := h.uplink(topics.Up("d1"), hello, id, "d1")
			if got := rotation.ReasonOf(err); got != tt.reason {
				t.Fatalf("hello: reason %q (%v), want %q", got, err, tt.reason)
			}
			rotated := false
			for _, ty := range h.out.types() {
				rotated = rotated || ty == protocol.TypeRotate
			}
			if rotated != tt.rotate {
				t.Errorf("rotate sent: %v, want %v", rotated, tt.rotate)
			}
			if tt.rotate && !contains(h.audit("d1"), "requested/policy") {
				t.Errorf("audit: %v", h.audit("d1"))
			}
		})
	}
}

// TestReturningDeviceOrder: a device back after months reports anchors v1
// and data key v1; fleetd answers with the anchors first (everything after
// may be signed by keys only the new sets name), then the delegation, then
// the missing data keys, and retires v1 only after the new primary went out.
func TestReturningDeviceOrder(t *testing.T) {
	h := newHarness(t, policy.Policy{DataKeysDecrypt: 2})
	id, _ := h.device("d1")
	ctx := context.Background()
	for range 4 {
		if _, err := h.escrow.Rotate(ctx, "test", nil); err != nil {
			t.Fatal(err)
		}
	}
	hello := &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 1, DataKeys: []uint32{1}}
	if err := h.uplink(topics.Up("d1"), hello, id, "d1"); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, p := range h.out.take() {
		switch m := p.msg.(type) {
		case *protocol.Anchors:
			order = append(order, "anchors")
		case *protocol.Delegation:
			order = append(order, "delegation")
		case *protocol.Key:
			order = append(order, "key"+string('0'+byte(m.Version)))
		case *protocol.Retire:
			order = append(order, "retire"+string('0'+byte(m.Version)))
		default:
			order = append(order, protocol.TypeOf(m).String())
		}
	}
	want := []string{"anchors", "delegation", "key2", "key3", "key4", "retire1"}
	if len(order) != len(want) {
		t.Fatalf("sent %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("sent %v, want %v", order, want)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
