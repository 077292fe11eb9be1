package anchors

import (
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
)

// TestSizes measures the encodings against the budgets the limits assume:
// a set with a root like certs.NewRoot makes is about 800 bytes, and the
// four sets protocol.Anchors carries fit one MQTT packet.
func TestSizes(t *testing.T) {
	h := fourSets(t)
	for i, b := range h.raw {
		t.Logf("v%d: %d bytes (root certificate %d, payload %d)", i+1, len(b), len(h.signed[i].Root), len(mustEncode(t, h.signed[i].Set)))
		if len(b) > 900 {
			t.Errorf("v%d is %d bytes, want at most 900", i+1, len(b))
		}
	}
	chain, err := EncodeChain(h.raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("4-set chain: %d bytes", len(chain))
	if len(chain) > protocol.MaxPacketSize-200 {
		t.Errorf("4-set chain is %d bytes, want room for a message header under protocol.MaxPacketSize (%d)", len(chain), protocol.MaxPacketSize)
	}
}
