package rotation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// TestRefusedUplinksAnswered: every refused uplink whose topic names a
// device is answered on the topic's down side with the reason's wire code
// and word, at most once per device and reason per AnswerInterval; the
// rest are counted only.
func TestRefusedUplinksAnswered(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	id, _ := h.device("d1")
	ctx := context.Background()
	hello := func() *protocol.Hello {
		return &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: 4}
	}
	badSig := h.seal(hello(), id, "d1")
	badSig[len(badSig)-1] ^= 0x55
	other, _ := device.NewKey()
	csr, _ := device.CSR("d1", other)
	re := &protocol.Reenroll{CSR: csr}
	re.RID = protocol.NewID()
	reenrollByOther := h.seal(re, other, "d1")

	for _, tc := range []struct {
		name   string
		topic  string
		b      []byte
		reason rotation.Reason
		code   protocol.ErrorCode
		down   string // "" : not answered
	}{
		{"garbage", topics.Up("d1"), []byte{0xa1, 0x01, 0xff}, rotation.ReasonMalformed, protocol.CodeMalformed, topics.Down("d1")},
		{"signed hello that does not decode", topics.Up("d1"), signHello(t, h, id, "d1"), rotation.ReasonMalformed, protocol.CodeMalformed, topics.Down("d1")},
		{"bad signature", topics.Up("d1"), badSig, rotation.ReasonBadSignature, protocol.CodeBadSignature, topics.Down("d1")},
		{"re-enrolment signed by another key", topics.Reenroll("d1"), reenrollByOther, rotation.ReasonUnknownKey, protocol.CodeBadSignature, topics.ReenrollDown("d1")},
		{"unknown device", topics.Up("ghost"), h.seal(hello(), id, "ghost"), rotation.ReasonUnknownDevice, protocol.CodeUnknownDevice, topics.Down("ghost")},
		{"no device in the topic", "kf/nothing", h.seal(hello(), id, "d1"), rotation.ReasonBadTopic, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.clk.Advance(rotation.AnswerInterval) // a new interval: each case answered on its own
			h.out.take()
			n0 := h.e.Stats().Rejected[string(tc.reason)]
			for i := range 3 {
				err := h.e.HandleUplink(ctx, tc.topic, tc.b)
				if got := rotation.ReasonOf(err); got != tc.reason {
					t.Fatalf("attempt %d: got %q (%v), want %q", i, got, err, tc.reason)
				}
			}
			if got := h.e.Stats().Rejected[string(tc.reason)]; got != n0+3 {
				t.Errorf("counted: got %d, want %d", got, n0+3)
			}
			out := h.out.take()
			if tc.down == "" {
				if len(out) != 0 {
					t.Errorf("answers: got %+v, want none", out)
				}
				return
			}
			if len(out) != 1 || out[0].topic != tc.down {
				t.Fatalf("answers: got %+v, want one on %s", out, tc.down)
			}
			e, ok := out[0].msg.(*protocol.Error)
			if !ok || e.Code != tc.code || e.Detail != string(tc.reason) {
				t.Errorf("answer: got %+v, want error code %d detail %q", out[0].msg, tc.code, tc.reason)
			}
			h.clk.Advance(rotation.AnswerInterval)
			_ = h.e.HandleUplink(ctx, tc.topic, tc.b)
			if out := h.out.take(); len(out) != 1 {
				t.Errorf("answers in the next interval: got %d, want 1", len(out))
			}
		})
	}

	t.Run("the device's own error message", func(t *testing.T) {
		h.out.take()
		e := &protocol.Error{Code: protocol.CodeInternal, Detail: "disk full"}
		b, err := h.codec.Seal(protocol.Stamp(e, h.clk.Now().Add(-60*24*time.Hour), 0), id, "d1") // stale
		if err != nil {
			t.Fatal(err)
		}
		if got := rotation.ReasonOf(h.e.HandleUplink(ctx, topics.Up("d1"), b)); got != rotation.ReasonStale {
			t.Fatalf("got %q, want stale", got)
		}
		if out := h.out.take(); len(out) != 0 {
			t.Errorf("answers: got %+v, want none (an error is never answered with an error)", out)
		}
	})
}

// signHello signs with key, as protocol.Codec.Seal does (kid unprotected,
// the audience in the external AAD), a hello whose payload is cut short, so
// that the signature verifies and the message does not decode.
func signHello(t *testing.T, h *harness, key *ecdsa.PrivateKey, dev string) []byte {
	t.Helper()
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(h.seal(&protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}}, key, dev)); err != nil {
		t.Fatal(err)
	}
	msg.Payload = msg.Payload[:len(msg.Payload)-1]
	msg.Signature = nil
	signer, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.Sign(rand.Reader, []byte("keyfleet/d/"+dev), signer); err != nil {
		t.Fatal(err)
	}
	b, err := msg.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	env, err := h.codec.Open(b)
	if err != nil || env.Verify(&key.PublicKey, dev) != nil {
		t.Fatalf("the cut hello is not a validly signed envelope: %v", err)
	}
	return b
}
