package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/protocol"
)

// TestAgentFirmware: manifests with a bad signature, a wrong digest or a
// rotated-out key are refused and nothing is installed; a good one is
// installed and confirmed; one that fails its boot check rolls back and
// the agent reports the old version.
func TestAgentFirmware(t *testing.T) {
	c := newChain(t, 2) // set 2 rotated the firmware key (and the others)
	vendor, class := firmware.UUID{1}, firmware.UUID{2}
	images := map[string][]byte{}
	image := func(v uint32) ([]byte, string) {
		img := bytes.Repeat([]byte{byte(v)}, 512)
		uri := fmt.Sprintf("test://fw/%d", v)
		images[uri] = img
		return img, uri
	}
	manifest := func(t *testing.T, v uint32, key crypto.Signer, digestOf []byte) []byte {
		img, uri := image(v)
		if digestOf == nil {
			digestOf = img
		}
		m := &firmware.Manifest{VendorID: vendor, ClassID: class, Version: v, Digest: sha256.Sum256(digestOf), Size: uint64(len(img)), URI: uri}
		b, err := firmware.Sign(m, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	fwMsg := func(t *testing.T, signed []byte) []byte {
		m := protocol.Stamp(&protocol.Firmware{Manifest: signed}, time.Now(), 0)
		m.IAT = 0
		b, err := protocol.NewCodec().Bare(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var failBoot map[uint32]bool
	newAgent := func(t *testing.T) *Agent {
		failBoot = map[uint32]bool{}
		a, _ := newAnchoredAgent(t, c, 1, &FirmwareOptions{
			Dir:      t.TempDir(),
			Identity: firmware.Identity{VendorID: vendor, ClassID: class, FactoryVersion: 1},
			Fetch: func(_ context.Context, uri string) ([]byte, error) {
				if b, ok := images[uri]; ok {
					return b, nil
				}
				return nil, errors.New("not found")
			},
			BootCheck: func(m *firmware.Manifest, _ []byte) error {
				if failBoot[m.Version] {
					return errors.New("self-test failed")
				}
				return nil
			},
		})
		// Walk to set 2: its firmware key is the trusted one from now on.
		if got := deliver(t, a, anchorsMsg(t, c.raw[1])); len(got) != 0 {
			t.Fatalf("walk to set 2: %v", got)
		}
		return a
	}
	bad := manifest(t, 2, c.keys[1].firmware, nil)
	bad[len(bad)-1] ^= 1 // the signature's last byte
	for _, tt := range []struct {
		name   string
		signed func(t *testing.T) []byte
	}{
		{"bad signature", func(*testing.T) []byte { return bad }},
		{"wrong digest", func(t *testing.T) []byte { return manifest(t, 2, c.keys[1].firmware, []byte("another image")) }},
		{"rotated-out key", func(t *testing.T) []byte { return manifest(t, 2, c.keys[0].firmware, nil) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgent(t)
			a.conn = nil // no report can be sent: a refusal must not try
			if got := deliver(t, a, fwMsg(t, tt.signed(t))); len(got) != 1 || got[0] != "firmware" {
				t.Errorf("rejections: got %v, want [firmware]", got)
			}
			if got := a.FirmwareVersion(); got != 1 {
				t.Errorf("running: got %d, want 1", got)
			}
			if p := a.fw.Pending(); p != 0 {
				t.Errorf("a trial was installed: %d", p)
			}
		})
	}
	t.Run("boot check fails: rollback, old version reported", func(t *testing.T) {
		a := newAgent(t)
		failBoot[2] = true
		var events []Event
		a.opts.OnEvent = func(e Event) { events = append(events, e) }
		// The agent reports after the attempt; with no connection the send
		// fails, which is what handle returns. The state is what counts.
		_ = a.handle(context.Background(), "kf/d/dev-1/down", fwMsg(t, manifest(t, 2, c.keys[1].firmware, nil)))
		if got := a.FirmwareVersion(); got != 1 {
			t.Errorf("running after a failed boot: got %d, want 1", got)
		}
		if !a.fw.Failed(2) {
			t.Error("version 2 not remembered as failed")
		}
		if len(events) == 0 || events[len(events)-1].Kind != EventRollback {
			t.Errorf("events: %v, want a rollback last", events)
		}
		// The report the agent sends carries the old version.
		h := protocol.Stamp(&protocol.Hello{}, time.Now(), 0)
		h.Firmware = a.FirmwareVersion()
		if h.Firmware != 1 {
			t.Errorf("hello reports firmware %d, want 1", h.Firmware)
		}
	})
	t.Run("good manifest: installed and confirmed", func(t *testing.T) {
		a := newAgent(t)
		_ = a.handle(context.Background(), "kf/d/dev-1/down", fwMsg(t, manifest(t, 3, c.keys[1].firmware, nil)))
		if got := a.FirmwareVersion(); got != 3 {
			t.Errorf("running: got %d, want 3", got)
		}
	})
}
