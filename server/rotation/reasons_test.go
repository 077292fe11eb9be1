package rotation_test

import (
	"regexp"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/rotation"
)

// TestReasonsTable: every reason has a wire code and a word of its own,
// and the mapping is the documented one (docs/protocol.md shows this same
// table: change both together).
func TestReasonsTable(t *testing.T) {
	want := map[rotation.Reason]protocol.ErrorCode{
		"bad-topic": 1, "too-large": 1, "malformed": 1, "unsigned": 1, "unexpected-type": 1, "unknown-slot": 1,
		"bad-signature": 2, "unknown-key": 2, "key-not-accepted": 2,
		"replay": 3, "reenroll-too-soon": 3,
		"expired": 4, "stale": 4,
		"unknown-version": 5, "not-pending": 5, "already-issued": 5,
		"bad-csr": 6, "csr-identity": 6, "key-reuse": 6,
		"revoked":    7,
		"queue-full": 8, "internal": 8,
		"no-rotation":    9,
		"unknown-device": 10, "no-birth-credential": 10,
		"not-current-key": 11,
	}
	word := regexp.MustCompile(`^[a-z]+(-[a-z]+)*$`)
	seen := map[rotation.Reason]bool{}
	for _, ri := range rotation.Reasons {
		if seen[ri.Reason] {
			t.Errorf("%q: listed twice", ri.Reason)
		}
		seen[ri.Reason] = true
		if !word.MatchString(string(ri.Reason)) {
			t.Errorf("%q: not a lower-case hyphenated word", ri.Reason)
		}
		if ri.Code == protocol.CodeUnknown {
			t.Errorf("%q: no wire code", ri.Reason)
		}
		if ri.Meaning == "" {
			t.Errorf("%q: no meaning", ri.Reason)
		}
		if w, ok := want[ri.Reason]; !ok || w != ri.Code {
			t.Errorf("%q: code %d, want %d (listed: %v)", ri.Reason, ri.Code, w, ok)
		}
		if got := ri.Reason.Info(); got != ri {
			t.Errorf("%q: Info() got %+v, want %+v", ri.Reason, got, ri)
		}
	}
	for r := range want {
		if !seen[r] {
			t.Errorf("%q: missing from Reasons", r)
		}
	}
	if got := rotation.Reason("no-such-reason").Info(); got.Code != protocol.CodeInternal || got.Answered {
		t.Errorf("unknown reason: got %+v, want internal, not answered", got)
	}
	for _, r := range []rotation.Reason{rotation.ReasonBadTopic, rotation.ReasonQueueFull, rotation.ReasonInternal} {
		if r.Info().Answered {
			t.Errorf("%q: answered, want not (no device named, dropped unread, or fleetd's own failure)", r)
		}
	}
}
