package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestCheckTime(t *testing.T) {
	now := testNow
	at := func(d time.Duration) uint64 { return uint64(now.Add(d).Unix()) }
	tests := []struct {
		name string
		h    Header
		want error
	}{
		{"no times", Header{}, nil},
		{"ok: issued now, expires later", Header{IAT: at(0), Exp: at(time.Hour)}, nil},
		{"ok: expires this second", Header{Exp: at(0)}, nil},
		{"expired one second ago", Header{Exp: at(-time.Second)}, ErrExpired},
		{"expired long ago", Header{IAT: at(-48 * time.Hour), Exp: at(-24 * time.Hour)}, ErrExpired},
		{"ok: issued in the past", Header{IAT: at(-30 * 24 * time.Hour)}, nil},
		{"ok: issued within clock skew", Header{IAT: at(MaxClockSkew)}, nil},
		{"issued-at beyond clock skew", Header{IAT: at(MaxClockSkew + time.Second)}, ErrExpired},
		{"issued-at far future", Header{IAT: at(365 * 24 * time.Hour), Exp: at(366 * 24 * time.Hour)}, ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTime(&tt.h, now)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("CheckTime(iat %d, exp %d) at %d: got err %v, want %v", tt.h.IAT, tt.h.Exp, now.Unix(), err, tt.want)
			}
			if err != nil && !IsRejection(err) {
				t.Errorf("IsRejection(%v) = false, want true", err)
			}
		})
	}
}

func TestStamp(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		wantExp uint64
	}{
		{"uplink, no expiry", 0, 0},
		{"command with ttl", 10 * time.Minute, uint64(testNow.Add(10 * time.Minute).Unix())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Stamp(&Rotate{Header: Header{Exp: 0}}, testNow, tt.ttl)
			if got := len(m.ID); got != MessageIDSize {
				t.Errorf("len(ID) = %d, want %d", got, MessageIDSize)
			}
			// Commands (ttl > 0) carry an expiry instead of an issued-at.
			wantIAT := uint64(testNow.Unix())
			if tt.ttl > 0 {
				wantIAT = 0
			}
			if got := m.IAT; got != wantIAT {
				t.Errorf("IAT = %d, want %d", got, wantIAT)
			}
			if m.Exp != tt.wantExp {
				t.Errorf("Exp = %d, want %d", m.Exp, tt.wantExp)
			}
		})
	}
	a, b := Stamp(&Hello{}, testNow, 0), Stamp(&Hello{}, testNow, 0)
	if bytes.Equal(a.ID, b.ID) {
		t.Errorf("two stamps got the same id %x, want fresh ids", a.ID)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if len(id) != MessageIDSize {
			t.Fatalf("len(NewID()) = %d, want %d", len(id), MessageIDSize)
		}
		if seen[string(id)] {
			t.Fatalf("NewID() repeated %x", id)
		}
		seen[string(id)] = true
	}
}

// TestTypeTable checks that every named type round-trips through newMessage
// and TypeOf, and that the wire constants did not move.
func TestTypeTable(t *testing.T) {
	wire := map[string]Type{
		"hello": 1, "rotate": 2, "enroll": 3, "cert": 4,
		"activated": 5, "retire": 6, "error": 7, "delegation": 8,
		"key": 9, "reenroll": 10, "anchors": 11, "firmware": 12,
	}
	bare := map[Type]bool{TypeCert: true, TypeAnchors: true, TypeFirmware: true}
	if len(typeNames) != len(wire) {
		t.Errorf("typeNames has %d entries, want %d (update this test and docs/protocol.cddl together)", len(typeNames), len(wire))
	}
	for typ, name := range typeNames {
		t.Run(name, func(t *testing.T) {
			if got := typ.String(); got != name {
				t.Errorf("Type(%d).String() = %q, want %q", typ, got, name)
			}
			if want, ok := wire[name]; ok && typ != want {
				t.Errorf("type %q = %d, want wire constant %d", name, typ, want)
			}
			m, err := newMessage(typ)
			if err != nil {
				t.Fatalf("newMessage(%v): %v", typ, err)
			}
			if got := TypeOf(m); got != typ {
				t.Errorf("TypeOf(newMessage(%v)) = %v, want %v", typ, got, typ)
			}
			if got, want := Signed(typ), !bare[typ]; got != want {
				t.Errorf("Signed(%v) = %v, want %v", typ, got, want)
			}
		})
	}
	for _, typ := range []Type{TypeUnknown, 13, 255} {
		if _, err := newMessage(typ); !errors.Is(err, ErrUnknownType) {
			t.Errorf("newMessage(%d): got err %v, want %v", typ, err, ErrUnknownType)
		}
		if got, want := typ.String(), "type("; len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("Type(%d).String() = %q, want prefix %q", typ, got, want)
		}
	}
}

func TestSlotString(t *testing.T) {
	tests := []struct {
		s    Slot
		want string
	}{
		{SlotIdentity, "identity"},
		{SlotUnknown, "slot(0)"},
		{7, "slot(7)"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("Slot(%d).String() = %q, want %q", tt.s, got, tt.want)
		}
	}
}
