package main

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
)

// One progress answer moves a waited-for rotation: finished states settle
// it, a device disconnected for awayAfter in a row is away, and one that
// comes back is waited for again.
func TestObserve(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	yes, no := true, false
	const awayAfter = 10 * time.Second
	for _, tc := range []struct {
		name      string
		before    waited
		p         adminapi.RotationProgress
		at        time.Time
		want      string
		wantSince time.Time
	}{
		{"activated", waited{}, adminapi.RotationProgress{State: "active", Connected: &yes}, t0, outcomeActivated, time.Time{}},
		{"superseded since", waited{}, adminapi.RotationProgress{State: "superseded", Connected: &no}, t0, outcomeActivated, time.Time{}},
		{"failed", waited{}, adminapi.RotationProgress{State: "failed", Connected: &yes}, t0, outcomeFailed, time.Time{}},
		{"cancelled", waited{}, adminapi.RotationProgress{State: "cancelled"}, t0, outcomeFailed, time.Time{}},
		{"device revoked", waited{}, adminapi.RotationProgress{State: "revoked", Connected: &no}, t0, outcomeFailed, time.Time{}},
		{"device gone", waited{}, adminapi.RotationProgress{Error: `device "x" not found`}, t0, outcomeFailed, time.Time{}},
		{"pending, connected", waited{}, adminapi.RotationProgress{State: "pending", Connected: &yes}, t0, outcomeWaiting, time.Time{}},
		{"issued, fleetd cannot tell", waited{}, adminapi.RotationProgress{State: "issued"}, t0, outcomeWaiting, time.Time{}},
		{"first seen away", waited{}, adminapi.RotationProgress{State: "pending", Connected: &no}, t0, outcomeWaiting, t0},
		{"away, not long enough", waited{awaySince: t0}, adminapi.RotationProgress{State: "issued", Connected: &no}, t0.Add(9 * time.Second), outcomeWaiting, t0},
		{"away long enough", waited{awaySince: t0}, adminapi.RotationProgress{State: "pending", Connected: &no}, t0.Add(10 * time.Second), outcomeAway, t0},
		{"back after a reconnect", waited{awaySince: t0}, adminapi.RotationProgress{State: "issued", Connected: &yes}, t0.Add(time.Second), outcomeWaiting, time.Time{}},
		{"away, then back", waited{Outcome: outcomeAway, awaySince: t0}, adminapi.RotationProgress{State: "pending", Connected: &yes}, t0.Add(time.Minute), outcomeWaiting, time.Time{}},
		{"away, then activated", waited{Outcome: outcomeAway, awaySince: t0}, adminapi.RotationProgress{State: "active", Connected: &yes}, t0.Add(time.Minute), outcomeActivated, t0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := tc.before
			w.observe(tc.p, tc.at, awayAfter)
			if w.Outcome != tc.want || !w.awaySince.Equal(tc.wantSince) {
				t.Errorf("got outcome %q, away since %v; want %q, %v", w.Outcome, w.awaySince, tc.want, tc.wantSince)
			}
		})
	}
}

// The exit status of rotate --wait: an error first, then failures and
// timeouts, then devices away.
func TestVerdict(t *testing.T) {
	for _, tc := range []struct {
		outcomes []string
		want     int
	}{
		{[]string{outcomeActivated, outcomeActivated}, exitOK},
		{nil, exitOK},
		{[]string{outcomeActivated, outcomeAway}, exitAway},
		{[]string{outcomeAway, outcomeFailed}, exitFailed},
		{[]string{outcomeAway, outcomeTimedOut}, exitFailed},
		{[]string{outcomeError, outcomeFailed, outcomeAway}, exitError},
	} {
		var all []*waited
		for _, o := range tc.outcomes {
			all = append(all, &waited{Outcome: o})
		}
		if summary, got := verdict(all); got != tc.want {
			t.Errorf("%v: got status %d (%s), want %d", tc.outcomes, got, summary, tc.want)
		}
	}
}

// rotate --wait against a real fleetd and real agents: 0 when the
// rotation activates, 3 for a device without an agent (also when it is
// still away at --timeout), 2 for a connected device that never answers,
// 1 for a rotation that cannot be requested.
func TestRotateWait(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	online := []string{f.AddDevice(t, "dev-on-1"), f.AddDevice(t, "dev-on-2")}
	f.AddDevice(t, "dev-away")
	silent(t, f.AddDevice(t, "dev-silent"), "dev-silent", f.MQTTAddr())
	f.AddDevice(t, "dev-revoked")
	if _, err := f.Admin.Revoke(context.Background(), "dev-revoked", "test"); err != nil {
		t.Fatal(err)
	}
	startAgents(t, online...)
	for _, id := range []string{"dev-on-1", "dev-on-2", "dev-silent"} {
		eventually(t, 30*time.Second, id+" connected", func() bool {
			p, err := f.Admin.RotationProgress(context.Background(), []adminapi.RotationRef{{Device: id, Version: 1}})
			return err == nil && p.Rotations[0].Connected != nil && *p.Rotations[0].Connected
		})
	}

	for _, tc := range []struct {
		name       string
		args       []string
		wantStatus int
		wantOut    []string
		wantErr    string
	}{
		{"one device activates", []string{"rotate", "dev-on-1", "--wait", "--timeout", "1m"}, exitOK,
			[]string{"dev-on-1 2 activated"}, "1 activated, 0 failed, 0 timed out, 0 away, 0 not requested, of 1"},
		{"a device without an agent is away", []string{"rotate", "dev-away", "--wait", "--away-after", "1s", "--timeout", "1d"}, exitAway,
			[]string{"dev-away 2 away", "not connected"}, "0 activated, 0 failed, 0 timed out, 1 away"},
		{"several: activated and away", []string{"rotate", "dev-on-1", "dev-on-2", "dev-away", "--wait", "--away-after", "1s"}, exitAway,
			[]string{"dev-on-1 3 activated", "dev-on-2 2 activated", "dev-away 2 away"}, "2 activated, 0 failed, 0 timed out, 1 away"},
		{"away at the timeout", []string{"rotate", "dev-on-1", "dev-on-2", "dev-away", "--wait", "--away-after", "1h", "--timeout", "2s"}, exitAway,
			[]string{"dev-away 2 away", "dev-on-1 4 activated"}, "2 activated, 0 failed, 0 timed out, 1 away, 0 not requested, of 3"},
		{"connected but never answering: timed out", []string{"rotate", "dev-silent", "--wait", "--timeout", "2s"}, exitFailed,
			[]string{"dev-silent 2 timed out pending"}, "0 activated, 0 failed, 1 timed out, 0 away"},
		{"timed out outweighs away", []string{"rotate", "dev-silent", "dev-away", "--wait", "--timeout", "2s", "--away-after", "1s"}, exitFailed,
			[]string{"dev-silent 2 timed out", "dev-away 2 away"}, "0 activated, 0 failed, 1 timed out, 1 away"},
		{"revoked cannot be requested", []string{"rotate", "dev-revoked", "--wait"}, exitError,
			nil, "device dev-revoked is revoked"},
		{"revoked among others", []string{"rotate", "dev-on-2", "dev-revoked", "--wait", "--timeout", "1m"}, exitError,
			[]string{"dev-revoked 0 error", "is revoked", "dev-on-2 4 activated"}, "1 activated, 0 failed, 0 timed out, 0 away, 1 not requested, of 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, status := run(tc.args...)
			out = strings.Join(strings.Fields(out), " ")
			if status != tc.wantStatus || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("got status %d, stderr %q; want %d and %q\n%s", status, errOut, tc.wantStatus, tc.wantErr, out)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		out, _, status := run("rotate", "dev-on-2", "--wait", "-o", "json", "--timeout", "1m")
		if status != exitOK || !strings.Contains(out, `"outcome": "activated"`) {
			t.Errorf("got status %d, %s; want 0 and an activated outcome", status, out)
		}
	})
}

// silent connects as the device with its real credential and never
// answers: a device that is there but does not rotate.
func silent(t *testing.T, dir, id, broker string) {
	t.Helper()
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	var tp protocol.Topics
	c, err := mqttc.Dial(context.Background(), mqttc.Options{
		Broker: broker, ClientID: id, Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
		Subscriptions: []string{tp.Down(id)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
