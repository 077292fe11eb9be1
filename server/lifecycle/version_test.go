package lifecycle

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestKeyVersionAccepted(t *testing.T) {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)
	earlier := now.Add(-time.Hour)
	for _, tc := range []struct {
		name  string
		k     KeyVersion
		at    time.Time
		wantA bool
	}{
		{"issued before NotAfter", KeyVersion{State: StateIssued, NotAfter: later}, now, true},
		{"issued at NotAfter", KeyVersion{State: StateIssued, NotAfter: now}, now, false},
		{"issued after NotAfter", KeyVersion{State: StateIssued, NotAfter: earlier}, now, false},
		{"active before NotAfter", KeyVersion{State: StateActive, NotAfter: later}, now, true},
		{"active one ns before NotAfter", KeyVersion{State: StateActive, NotAfter: now.Add(time.Nanosecond)}, now, true},
		{"active after NotAfter", KeyVersion{State: StateActive, NotAfter: earlier}, now, false},
		{"active zero NotAfter", KeyVersion{State: StateActive}, now, false},
		{"superseded before GraceUntil", KeyVersion{State: StateSuperseded, NotAfter: later, GraceUntil: later}, now, true},
		{"superseded at GraceUntil", KeyVersion{State: StateSuperseded, NotAfter: later, GraceUntil: now}, now, false},
		{"superseded after GraceUntil", KeyVersion{State: StateSuperseded, NotAfter: later, GraceUntil: earlier}, now, false},
		{"superseded in grace after NotAfter", KeyVersion{State: StateSuperseded, NotAfter: earlier, GraceUntil: later}, now, false},
		{"superseded zero GraceUntil", KeyVersion{State: StateSuperseded, NotAfter: later}, now, false},
		{"retired before NotAfter", KeyVersion{State: StateRetired, NotAfter: later, GraceUntil: later}, now, false},
		{"revoked before NotAfter", KeyVersion{State: StateRevoked, NotAfter: later, GraceUntil: later}, now, false},
		{"pending", KeyVersion{State: StatePending, NotAfter: later, GraceUntil: later}, now, false},
		{"unknown state", KeyVersion{State: StateUnknown, NotAfter: later, GraceUntil: later}, now, false},
		{"out-of-range state", KeyVersion{State: State(200), NotAfter: later, GraceUntil: later}, now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.k.Accepted(tc.at); got != tc.wantA {
				t.Errorf("Accepted(%v) of %v version (NotAfter %v, GraceUntil %v): got %v, want %v",
					tc.at, tc.k.State, tc.k.NotAfter, tc.k.GraceUntil, got, tc.wantA)
			}
		})
	}
}

func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s    State
		want string
	}{
		{StateUnknown, "unknown"},
		{StatePending, "pending"},
		{StateIssued, "issued"},
		{StateActive, "active"},
		{StateSuperseded, "superseded"},
		{StateRetired, "retired"},
		{StateRevoked, "revoked"},
		{StateFailed, "failed"},
		{StateCancelled, "cancelled"},
		{State(9), "state(9)"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.s.String(); got != tc.want {
				t.Errorf("State(%d).String(): got %q, want %q", uint8(tc.s), got, tc.want)
			}
		})
	}
}

// versions builds a slot's versions from a string of state letters, oldest
// first: p pending, i issued, a active, s superseded, r retired, x revoked,
// f failed, c cancelled. Only this package's tests may build a slot that no
// sequence of moves reaches.
func versions(states string) []*KeyVersion {
	m := map[rune]State{
		'p': StatePending, 'i': StateIssued, 'a': StateActive,
		's': StateSuperseded, 'r': StateRetired, 'x': StateRevoked,
		'f': StateFailed, 'c': StateCancelled,
	}
	var out []*KeyVersion
	for i, c := range states {
		st, ok := m[c]
		if !ok {
			panic(fmt.Sprintf("versions: unknown state letter %q", c))
		}
		out = append(out, &KeyVersion{Version: uint32(i + 1), State: st})
	}
	return out
}

func isDead(k *KeyVersion) bool {
	return k.State == StateRetired || k.State == StateRevoked || k.State == StateFailed || k.State == StateCancelled
}

func TestSlotStatePrune(t *testing.T) {
	if MaxHistory < 1 {
		t.Fatalf("MaxHistory: got %d, want at least 1", MaxHistory)
	}
	for _, tc := range []struct {
		name   string
		states string
		// want lists the version numbers kept, oldest first.
		want []uint32
	}{
		{"empty", "", nil},
		{"all live", "sssaip", []uint32{1, 2, 3, 4, 5, 6}},
		{"many live, no dead", "ssssssssssa", []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
		{"exactly MaxHistory dead", "rrrrsa", []uint32{1, 2, 3, 4, 5, 6}},
		{"one dead too many", "rrrrrsa", []uint32{2, 3, 4, 5, 6, 7}},
		{"many dead", "rrrrrrrrrrsap", []uint32{7, 8, 9, 10, 11, 12, 13}},
		{"revoked count as dead", "xrxrxa", []uint32{2, 3, 4, 5, 6}},
		{"failed and cancelled count as dead", "fcrxfa", []uint32{2, 3, 4, 5, 6}},
		{"dead interleaved with live", "rsrsrsrsrsa", []uint32{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
		{"live oldest, dead newest", "srrrrrr", []uint32{1, 4, 5, 6, 7}},
		{"only dead", "rrrrrrrr", []uint32{5, 6, 7, 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &SlotState{Versions: versions(tc.states)}
			orig := slices.Clone(s.Versions)
			s.Prune()

			var got []uint32
			dead := 0
			for _, k := range s.Versions {
				got = append(got, k.Version)
				if isDead(k) {
					dead++
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Prune(%q): got versions %v, want %v", tc.states, got, tc.want)
			}
			if dead > MaxHistory {
				t.Errorf("Prune(%q): got %d dead versions, want at most %d", tc.states, dead, MaxHistory)
			}
			for _, k := range orig {
				if !isDead(k) && s.Version(k.Version) != k {
					t.Errorf("Prune(%q): live version %d (%v) got dropped, want kept", tc.states, k.Version, k.State)
				}
			}
			// Idempotent.
			before := slices.Clone(s.Versions)
			s.Prune()
			if !slices.Equal(s.Versions, before) {
				t.Errorf("second Prune(%q): got %d versions, want the same %d", tc.states, len(s.Versions), len(before))
			}
		})
	}
}

func TestSlotStateLookups(t *testing.T) {
	s := &SlotState{Versions: versions("rsas")}
	for i, k := range s.Versions {
		k.KeyID = []byte{byte('a' + i)}
	}
	// "rsas" is not a valid life cycle (two superseded around an active),
	// but lookups must not care.
	for _, tc := range []struct {
		name string
		got  *KeyVersion
		want uint32 // 0: nil
	}{
		{"Version(2)", s.Version(2), 2},
		{"Version(9)", s.Version(9), 0},
		{"Latest", s.Latest(), 4},
		{"Active", s.Active(), 3},
		{"ByKeyID(b)", s.ByKeyID([]byte("b")), 2},
		{"ByKeyID(z)", s.ByKeyID([]byte("z")), 0},
		{"Latest of empty", (&SlotState{}).Latest(), 0},
		{"Active of empty", (&SlotState{}).Active(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got uint32
			if tc.got != nil {
				got = tc.got.Version
			}
			if got != tc.want {
				t.Errorf("%s: got version %d, want %d (0 = nil)", tc.name, got, tc.want)
			}
		})
	}
}
