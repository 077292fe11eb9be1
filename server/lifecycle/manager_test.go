package lifecycle

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func cred(n byte) Credential {
	return Credential{Cert: []byte{0x30, n}, KeyID: []byte{'k', n}, Serial: fmt.Sprintf("%02x", n), NotAfter: t0.Add(90 * 24 * time.Hour)}
}

// TestLegal checks the whole life cycle, every (from, to) pair, against
// the moves written out once more here.
func TestLegal(t *testing.T) {
	want := map[[2]State]bool{
		{StateUnknown, StatePending}: true, {StateUnknown, StateActive}: true,
		{StatePending, StateIssued}: true, {StatePending, StateRevoked}: true, {StatePending, StateFailed}: true, {StatePending, StateCancelled}: true,
		{StateIssued, StateActive}: true, {StateIssued, StateRevoked}: true, {StateIssued, StateFailed}: true, {StateIssued, StateCancelled}: true,
		{StateActive, StateSuperseded}: true, {StateActive, StateRevoked}: true,
		{StateSuperseded, StateRetired}: true, {StateSuperseded, StateRevoked}: true,
	}
	for from := State(0); from <= numStates; from++ { // numStates: one out of range
		for to := State(0); to <= numStates; to++ {
			if got := Legal(from, to); got != want[[2]State{from, to}] {
				t.Errorf("Legal(%v, %v): got %v, want %v", from, to, got, !got)
			}
		}
	}
}

// reach returns a slot of device d1 whose version v is in state s, reached
// through the moves only.
func reach(t *testing.T, s State) (*SlotState, uint32) {
	t.Helper()
	st := &SlotState{}
	m := Manage(st, "d1", protocol.SlotIdentity, "test")
	must := func(_ []Change, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("reach %v: %v", s, err)
		}
	}
	must(m.Provision(cred(1), t0))
	_, c, err := m.Request([]byte("rid-2"), t0.Add(time.Minute))
	must(c, err)
	switch s {
	case StatePending:
		return st, 2
	case StateFailed:
		must(m.Fail(2, t0.Add(2*time.Minute)))
		return st, 2
	case StateCancelled:
		must(m.Cancel(2, t0.Add(2*time.Minute)))
		return st, 2
	}
	must(m.Issue(2, cred(2), []byte("enroll-2"), t0.Add(2*time.Minute)))
	switch s {
	case StateIssued:
		return st, 2
	case StateRevoked:
		must(m.Revoke(2, t0.Add(3*time.Minute)))
		return st, 2
	}
	must(m.Activate(2, []byte("act-2"), t0.Add(3*time.Minute), t0.Add(time.Hour)))
	switch s {
	case StateActive:
		return st, 2
	case StateSuperseded:
		return st, 1
	case StateRetired:
		must(m.Retire(1, t0.Add(2*time.Hour)))
		return st, 1
	}
	t.Fatalf("reach: no path to %v", s)
	return nil, 0
}

func clone(s *SlotState) *SlotState {
	c := *s
	c.Versions = nil
	for _, k := range s.Versions {
		kc := *k
		c.Versions = append(c.Versions, &kc)
	}
	return &c
}

// TestMoves applies every move method to a version in every state: a
// legal move changes that version's state and returns its Change; an
// illegal one returns a *MoveError and changes nothing.
func TestMoves(t *testing.T) {
	at := t0.Add(24 * time.Hour)
	moves := []struct {
		name string
		to   State
		do   func(m *Manager, v uint32) ([]Change, error)
	}{
		{"issue", StateIssued, func(m *Manager, v uint32) ([]Change, error) { return m.Issue(v, cred(9), []byte("e"), at) }},
		{"activate", StateActive, func(m *Manager, v uint32) ([]Change, error) { return m.Activate(v, []byte("a"), at, at.Add(time.Hour)) }},
		{"supersede", StateSuperseded, func(m *Manager, v uint32) ([]Change, error) { return m.Supersede(v, at.Add(time.Hour)) }},
		{"retire", StateRetired, func(m *Manager, v uint32) ([]Change, error) { return m.Retire(v, at) }},
		{"revoke", StateRevoked, func(m *Manager, v uint32) ([]Change, error) { return m.Revoke(v, at) }},
		{"fail", StateFailed, func(m *Manager, v uint32) ([]Change, error) { return m.Fail(v, at) }},
		{"cancel", StateCancelled, func(m *Manager, v uint32) ([]Change, error) { return m.Cancel(v, at) }},
	}
	for from := StatePending; from < numStates; from++ {
		for _, mv := range moves {
			t.Run(fmt.Sprintf("%s from %v", mv.name, from), func(t *testing.T) {
				st, v := reach(t, from)
				before := clone(st)
				changes, err := mv.do(Manage(st, "d1", protocol.SlotIdentity, "op"), v)
				if !Legal(from, mv.to) {
					var me *MoveError
					if !errors.Is(err, ErrIllegalMove) || !errors.As(err, &me) {
						t.Fatalf("got %v, want a *MoveError (ErrIllegalMove)", err)
					}
					if me.From != from || me.To != mv.to || me.Version != v || me.Device != "d1" || me.Slot != SlotIdentity {
						t.Errorf("MoveError: got %+v, want d1 identity v%d %v -> %v", me, v, from, mv.to)
					}
					if changes != nil {
						t.Errorf("changes: got %v, want none", changes)
					}
					if !reflect.DeepEqual(st, before) {
						t.Errorf("slot changed by a refused move:\n got %+v\nwant %+v", st, before)
					}
					return
				}
				if err != nil {
					t.Fatalf("legal move: %v", err)
				}
				if got := st.Version(v).State; got != mv.to {
					t.Errorf("state: got %v, want %v", got, mv.to)
				}
				last := changes[len(changes)-1]
				if last.From != from || last.To != mv.to || last.Version != v || last.Actor != "op" || last.Device != "d1" {
					t.Errorf("change: got %+v, want d1 v%d %v -> %v by op", last, v, from, mv.to)
				}
				if mv.to.Dead() && !st.Version(v).RetiredAt.Equal(at) {
					t.Errorf("RetiredAt: got %v, want %v", st.Version(v).RetiredAt, at)
				}
			})
		}
	}
}

func TestMoveUnknownVersion(t *testing.T) {
	st, _ := reach(t, StateActive)
	m := Manage(st, "d1", protocol.SlotIdentity, "op")
	for name, do := range map[string]func() ([]Change, error){
		"issue":    func() ([]Change, error) { return m.Issue(7, cred(7), nil, t0) },
		"activate": func() ([]Change, error) { return m.Activate(7, nil, t0, t0) },
		"retire":   func() ([]Change, error) { return m.Retire(7, t0) },
		"revoke":   func() ([]Change, error) { return m.Revoke(7, t0) },
	} {
		if _, err := do(); !errors.Is(err, ErrUnknownVersion) {
			t.Errorf("%s v7: got %v, want ErrUnknownVersion", name, err)
		}
	}
}

func TestProvisionAndRequest(t *testing.T) {
	st := &SlotState{}
	m := Manage(st, "d1", protocol.SlotIdentity, "admin:op")
	c, err := m.Provision(cred(1), t0)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Change{Device: "d1", Slot: SlotIdentity, Version: 1, From: StateUnknown, To: StateActive, Actor: "admin:op"}); !reflect.DeepEqual(c, []Change{want}) {
		t.Errorf("provision: got %+v, want %+v", c, want)
	}
	if c[0].Action() != "provisioned" || st.Desired != 1 || st.Reported != 1 || string(st.Versions[0].Cert) != string(cred(1).Cert) {
		t.Errorf("provisioned slot: %+v, action %q", st, c[0].Action())
	}
	if _, err := m.Provision(cred(2), t0); !errors.Is(err, ErrIllegalMove) {
		t.Errorf("second provision: got %v, want ErrIllegalMove", err)
	}
	k, c, err := m.Request([]byte("rid"), t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != 2 || st.Desired != 2 || c[0].To != StatePending || c[0].Action() != "requested" || string(c[0].RID) != "rid" {
		t.Errorf("request: version %d, desired %d, change %+v", k.Version, st.Desired, c)
	}
	if _, _, err := m.Request([]byte("rid-b"), t0); !errors.Is(err, ErrRotationOpen) {
		t.Errorf("second request while open: got %v, want ErrRotationOpen", err)
	}
	if _, err := m.Cancel(2, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if k, _, err := m.Request([]byte("rid-3"), t0); err != nil || k.Version != 3 {
		t.Errorf("request after a cancelled one: got %v, %v, want version 3", k, err)
	}
}

func TestActivateSupersedes(t *testing.T) {
	st, _ := reach(t, StateIssued)
	m := Manage(st, "d1", protocol.SlotIdentity, "device")
	at, until := t0.Add(10*time.Minute), t0.Add(7*24*time.Hour)
	c, err := m.Activate(2, []byte("act"), at, until)
	if err != nil {
		t.Fatal(err)
	}
	if len(c) != 2 || c[0].Version != 1 || c[0].To != StateSuperseded || string(c[0].RID) != "rid-2" ||
		c[1].Version != 2 || c[1].To != StateActive || c[1].Latency != 9*time.Minute {
		t.Fatalf("changes: got %+v, want v1 superseded then v2 active after 9m", c)
	}
	if v1 := st.Version(1); !v1.GraceUntil.Equal(until) {
		t.Errorf("v1 grace: got %v, want %v", v1.GraceUntil, until)
	}
	if v2 := st.Version(2); string(v2.ActivatedID) != "act" || !v2.ActivatedAt.Equal(at) || st.Active() != v2 {
		t.Errorf("v2: %+v", v2)
	}
}

func TestRevokeAll(t *testing.T) {
	st, _ := reach(t, StateActive) // v1 superseded, v2 active
	m := Manage(st, "d1", protocol.SlotIdentity, "admin:op")
	if _, c, err := m.Request([]byte("rid-3"), t0); err != nil || len(c) != 1 {
		t.Fatal(err)
	}
	c := m.RevokeAll(t0.Add(time.Hour))
	if len(c) != 3 {
		t.Fatalf("changes: got %+v, want 3", c)
	}
	for _, k := range st.Versions {
		if k.State != StateRevoked {
			t.Errorf("v%d: got %v, want revoked", k.Version, k.State)
		}
	}
	if c := m.RevokeAll(t0.Add(2 * time.Hour)); len(c) != 0 {
		t.Errorf("second RevokeAll: got %+v, want no change", c)
	}
}

func TestChangeAction(t *testing.T) {
	for to := StatePending; to < numStates; to++ {
		if a := (Change{From: StatePending, To: to}).Action(); a == "" {
			t.Errorf("Action of a move to %v: empty", to)
		}
	}
}
