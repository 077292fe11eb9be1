package store_test

import (
	"bytes"
	"encoding/hex"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

func TestDeviceSlotCreates(t *testing.T) {
	var d store.Device
	st := d.Slot(1)
	st.Desired = 3
	if got := d.Slot(1).Desired; got != 3 {
		t.Errorf("Slot(1).Desired after set: got %d, want 3", got)
	}
	if got := len(d.Slots); got != 1 {
		t.Errorf("len(Slots): got %d, want 1", got)
	}
}

// oldSlot is a slot with version 1 superseded and version 2 active, as
// the store encoded it before key versions moved to package lifecycle
// (KeyState then, lifecycle.State now): records on disk must keep
// decoding, and new records must encode the same way.
const oldSlot = "a3674465736972656402685265706f72746564026856657273696f6e7382af63524944f66443657274423001654b65794944426b31655374617465046653657269616c6230316756657273696f6e0168456e726f6c6c4944f6684973737565644174781e323033312d30332d31345431353a30393a32362e3533353839373933325a684e6f744166746572781e323033312d30362d31325431353a30393a32362e3533353839373933325a69526574697265644174f66a4772616365556e74696c781e323033312d30332d31345431363a30393a32362e3533353839373933325a6a5265656e726f6c6c6564f46b4163746976617465644174781e323033312d30332d31345431353a30393a32362e3533353839373933325a6b4163746976617465644944f66b5265717565737465644174781e323033312d30332d31345431353a30393a32362e3533353839373933325aaf63524944457269642d326443657274423002654b65794944426b32655374617465036653657269616c6230326756657273696f6e0268456e726f6c6c4944426532684973737565644174781e323033312d30332d31345431353a31313a32362e3533353839373933325a684e6f744166746572781e323033312d30362d31335431353a30393a32362e3533353839373933325a69526574697265644174f66a4772616365556e74696cf66a5265656e726f6c6c6564f46b4163746976617465644174781e323033312d30332d31345431353a31323a32362e3533353839373933325a6b41637469766174656449444261326b5265717565737465644174781e323033312d30332d31345431353a31303a32362e3533353839373933325a"

func TestSlotEncodingKept(t *testing.T) {
	golden, err := hex.DecodeString(oldSlot)
	if err != nil {
		t.Fatal(err)
	}
	var got store.SlotState
	if err := cbor.Unmarshal(golden, &got); err != nil {
		t.Fatalf("decode a record of the old encoding: %v", err)
	}
	if len(got.Versions) != 2 || got.Version(1).State != lifecycle.StateSuperseded || got.Version(2).State != lifecycle.StateActive ||
		string(got.Version(2).RID) != "rid-2" || got.Desired != 2 || got.Reported != 2 {
		t.Errorf("decoded: got %+v, want v1 superseded, v2 active (rid-2), desired and reported 2", got)
	}

	at := time.Date(2031, 3, 14, 15, 9, 26, 535897932, time.UTC)
	s := &store.SlotState{}
	m := lifecycle.Manage(s, "d1", protocol.SlotIdentity, "test")
	steps := []func() error{
		func() error {
			_, err := m.Provision(lifecycle.Credential{Cert: []byte{0x30, 1}, KeyID: []byte("k1"), Serial: "01", NotAfter: at.Add(90 * 24 * time.Hour)}, at)
			return err
		},
		func() error { _, _, err := m.Request([]byte("rid-2"), at.Add(time.Minute)); return err },
		func() error {
			_, err := m.Issue(2, lifecycle.Credential{Cert: []byte{0x30, 2}, KeyID: []byte("k2"), Serial: "02", NotAfter: at.Add(91 * 24 * time.Hour)},
				[]byte("e2"), at.Add(2*time.Minute))
			return err
		},
		func() error {
			_, err := m.Activate(2, []byte("a2"), at.Add(3*time.Minute), at.Add(time.Hour))
			return err
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	s.Reported = 2
	o := cbor.CoreDetEncOptions()
	o.Time = cbor.TimeRFC3339Nano // as store.OpenBolt encodes
	em, err := o.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := em.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, golden) {
		t.Errorf("encoding changed:\n got %x\nwant %s", b, oldSlot)
	}
}
