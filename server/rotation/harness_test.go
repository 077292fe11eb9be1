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
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/clock"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
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
	keeper *online.Keeper
	pol    policy.Policy

	mu      sync.Mutex
	changes []lifecycle.Change // what the engine reported through OnStateChange
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
	h := &harness{t: t, clk: clk, codec: protocol.NewCodec(), out: &sent{}, pol: pol}
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
	h.keeper = keeper
	if h.st, err = store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.st.Close() })
	if h.escrow, err = escrow.New(keys, h.st, pol, clk.Now); err != nil {
		t.Fatal(err)
	}
	h.e = rotation.New(h.st, h.ca, keeper, h.codec, rotation.Options{Policy: pol, CommandTTL: 30 * 24 * time.Hour,
		Now: clk.Now, Anchors: anchorSets{[]byte("v1"), []byte("v2"), []byte("v3"), []byte("v4")}, DataKeys: h.escrow,
		OnStateChange: func(c lifecycle.Change) { h.mu.Lock(); h.changes = append(h.changes, c); h.mu.Unlock() }})
	h.e.SetPublisher(h.out)
	return h
}

// device provisions id with an identity and a birth credential and
// returns their keys.
func (h *harness) device(id string) (idKey, birth *ecdsa.PrivateKey) {
	h.t.Helper()
	idKey, _ = device.NewKey()
	birth, _ = device.NewKey()
	csrDER, _ := device.CSR(id, idKey)
	csr, _ := x509.ParseCertificateRequest(csrDER)
	bc, err := h.birth.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleIDevID, Name: id}, PublicKey: &birth.PublicKey})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.e.Provision(context.Background(), id, csr, bc, "test"); err != nil {
		h.t.Fatal(err)
	}
	return idKey, birth
}

func (h *harness) uplink(topic string, m protocol.Message, key *ecdsa.PrivateKey, device string) error {
	h.t.Helper()
	b, err := h.codec.Seal(protocol.Stamp(m, h.clk.Now(), 0), key, device)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.e.HandleUplink(context.Background(), topic, b)
}

// seal signs m, freshly stamped, for device with key.
func (h *harness) seal(m protocol.Message, key *ecdsa.PrivateKey, device string) []byte {
	h.t.Helper()
	b, err := h.codec.Seal(protocol.Stamp(m, h.clk.Now(), 0), key, device)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// takeChanges returns the changes reported since the last call.
func (h *harness) takeChanges() []lifecycle.Change {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.changes
	h.changes = nil
	return out
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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
