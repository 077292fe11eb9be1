package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
)

func TestChangePrinter(t *testing.T) {
	at := time.Date(2026, 11, 30, 7, 51, 2, 0, time.UTC)
	for _, tc := range []struct {
		name string
		c    lifecycle.Change
		want string
	}{
		{"identity active", lifecycle.Change{Device: "dev-01", Slot: lifecycle.SlotIdentity, Version: 3, To: lifecycle.StateActive,
			Latency: 152 * time.Millisecond}, "07:51:02 dev-01 identity v3 active (152ms)\n"},
		{"anchors fleet-wide", lifecycle.Change{Slot: lifecycle.SlotAnchors, Version: 2, To: lifecycle.StateActive},
			"07:51:02 anchors v2 active\n"},
		{"data key retired", lifecycle.Change{Device: "dev-02", Slot: lifecycle.SlotData, Version: 1, To: lifecycle.StateRetired},
			"07:51:02 dev-02 data v1 retired\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			p := &changePrinter{w: &out, now: func() time.Time { return at }}
			p.print(tc.c)
			if out.String() != tc.want {
				t.Errorf("got %q, want %q", out.String(), tc.want)
			}
		})
	}
}
