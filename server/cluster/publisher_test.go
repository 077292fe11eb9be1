package cluster

import (
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
)

// Which topics are a device's (and so routed to the node holding its
// session), and which of those may take a delegation first.
func TestDeviceOf(t *testing.T) {
	for _, tc := range []struct {
		prefix, topic string
		device        string
		down, ok      bool
	}{
		{"", "kf/d/dev-1/down", "dev-1", true, true},
		{"", "kf/d/dev-1/reenroll/down", "dev-1", false, true},
		{"acme", "acme/d/dev-1/down", "dev-1", true, true},
		{"acme", "acme/d/dev-1/reenroll/down", "dev-1", false, true},
		{"", "kf/d/dev-1/up", "", false, false},
		{"", "kf/d/dev-1/reenroll", "", false, false},
		{"", "kf/b/anchors", "", false, false},
		{"", "kf/b/delegation", "", false, false},
		{"acme", "kf/d/dev-1/down", "", false, false},
		{"", "kf/d/a/b/reenroll/down", "", false, false},
		{"", "kf/d//down", "", false, false},
	} {
		p := &ClusterPublisher{n: &Node{o: Options{Topics: protocol.Topics{Prefix: tc.prefix}}}}
		d, down, ok := p.deviceOf(tc.topic)
		if d != tc.device || down != tc.down || ok != tc.ok {
			t.Errorf("deviceOf(%q) with prefix %q = %q, %v, %v; want %q, %v, %v", tc.topic, tc.prefix, d, down, ok, tc.device, tc.down, tc.ok)
		}
	}
}
