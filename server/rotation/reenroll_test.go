package rotation_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"testing"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

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
		reason rotation.Reason
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

// TestReenrollRedelivered: the same re-enrolment bytes again (a QoS
// redelivery) get the same certificate, like a retry with a fresh id; the
// rotation the device could no longer finish is cancelled, audited as
// abandoned.
func TestReenrollRedelivered(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	_, birth := h.device("d1")
	ctx := context.Background()
	if _, err := h.e.RequestRotation(ctx, "d1", "test"); err != nil {
		t.Fatal(err)
	}
	newKey, _ := device.NewKey()
	csr, _ := device.CSR("d1", newKey)
	re := &protocol.Reenroll{CSR: csr, Anchors: 4}
	re.RID = protocol.NewID()
	b := h.seal(re, birth, "d1")
	h.out.take()
	var first []byte
	for i := range 2 {
		if err := h.e.HandleUplink(ctx, topics.Reenroll("d1"), b); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		c := certsIn(h.out.take())
		if len(c) != 1 || c[0].Version != 3 {
			t.Fatalf("attempt %d: got %+v, want the certificate of v3", i, c)
		}
		if i == 0 {
			first = c[0].Cert
		} else if !bytes.Equal(c[0].Cert, first) {
			t.Error("the redelivery got another certificate")
		}
	}
	d, err := h.st.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	s := d.Slot(protocol.SlotIdentity)
	if v2, v3 := s.Version(2), s.Version(3); v2.State != lifecycle.StateCancelled || v3.State != lifecycle.StateIssued || !v3.Reenrolled {
		t.Errorf("versions: v2 %v, v3 %v (reenrolled %v); want cancelled, issued, true", v2.State, v3.State, v3.Reenrolled)
	}
	if a := h.audit("d1"); !contains(a, "abandoned/device:idevid") || !contains(a, "reenrolled/device:idevid") {
		t.Errorf("audit: %v", a)
	}
	if st := h.e.Stats(); st.Issued != 1 || st.Reenrolled != 1 || len(st.Rejected) != 0 {
		t.Errorf("stats: issued %d, reenrolled %d, rejected %v; want 1, 1, none", st.Issued, st.Reenrolled, st.Rejected)
	}
}
