package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// Bad create flags exit 1 naming the flag, before anything is sent.
func TestCampaignCreateFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--stages", "10%,5%,100%"}, "--stages"},
		{[]string{"--stages", "10%,50%"}, "--stages"},
		{[]string{"--stages", "10,100%"}, "--stages"},
		{[]string{"--stages", "0%,100%"}, "--stages"},
		{[]string{"--stages", "50%,150%"}, "--stages"},
		{[]string{"--max-failure", "2"}, "--max-failure"},
		{[]string{"--max-failure", "101%"}, "--max-failure"},
		{[]string{"--max-failure", "-1%"}, "--max-failure"},
		{[]string{"--rate", "1000"}, "--rate"},
		{[]string{"--rate", "10/day"}, "--rate"},
		{[]string{"--rate", "-5/min"}, "--rate"},
		{[]string{"--rate", "1/h"}, "--rate"},
		{[]string{"--min-reached", "-1"}, "--min-reached"},
		{[]string{"--device-timeout", "0s"}, "--device-timeout"},
		{[]string{"--kind", "firmware"}, "--release"},
		{[]string{"--kind", "data-key", "--release", "3"}, "--release"},
		{[]string{"--release", "3"}, "--release"},
		{[]string{"--roles", "ca"}, "--roles"},
		{[]string{"--kind", "anchors", "--roles", "ca,root"}, "--roles"},
		{[]string{"--kind", "anchors", "--roles", "update,update"}, "--roles"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			// No fleetd listens there: a flag error must come first.
			status := run(append([]string{"--admin", "127.0.0.1:1", "--credential", t.TempDir(), "campaign", "create"}, tc.args...), &out, &errOut)
			if status != exitError || !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("status %d, stderr %q; want 1 naming %s", status, errOut.String(), tc.want)
			}
		})
	}
}

// campaign create --watch exits 0 when the campaign completes and 2 when
// it pauses itself (a device connected that never answers fails it);
// list, show and the actions print what fleetd says, and an action the
// campaign's state forbids exits 1.
func TestCampaignWatch(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	online := []string{f.AddDevice(t, "dev-1"), f.AddDevice(t, "dev-2")}
	startAgents(t, online...)
	for _, id := range []string{"dev-1", "dev-2"} {
		deadline := time.Now().Add(30 * time.Second)
		for !f.Broker().Present(id) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never connected", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	out, errOut, status := run("campaign", "create", "--stages", "50%,100%", "--device-timeout", "1m", "--watch")
	if status != exitOK || !strings.Contains(out, "campaign c1 completed: 2 succeeded, 0 failed, 0 away") ||
		!strings.Contains(out, "stage 1 of 2 (50%): 1 devices: 1 succeeded") {
		t.Fatalf("create --watch: status %d\nstdout:\n%s\nstderr:\n%s", status, out, errOut)
	}
	out, _, status = run("campaign", "show", "c1")
	if status != exitOK || !strings.Contains(out, "completed") || strings.Count(out, "succeeded") < 2 {
		t.Errorf("show: status %d\n%s", status, out)
	}

	silent(t, f.AddDevice(t, "dev-silent"), "dev-silent", f.MQTTAddr())
	out, errOut, status = run("campaign", "create", "--stages", "100%", "--max-failure", "0%", "--device-timeout", "2s", "--watch")
	if status != exitFailed || !strings.Contains(errOut, "campaign c2 is paused: paused itself in stage 1: 1 of 3 reached devices failed") {
		t.Fatalf("create --watch of a failing campaign: status %d\nstdout:\n%s\nstderr:\n%s", status, out, errOut)
	}
	out, _, status = run("campaign", "list")
	if status != exitOK || !strings.Contains(out, "c1") || !strings.Contains(out, "paused") {
		t.Errorf("list: status %d\n%s", status, out)
	}
	if _, errOut, status = run("campaign", "watch", "c2"); status != exitFailed {
		t.Errorf("watch of a paused campaign: status %d, %s", status, errOut)
	}
	if out, _, status = run("campaign", "abort", "c2"); status != exitOK || !strings.Contains(out, "aborted") {
		t.Errorf("abort: status %d\n%s", status, out)
	}
	if _, errOut, status = run("campaign", "resume", "c2"); status != exitError || !strings.Contains(errOut, "campaign c2 is aborted") {
		t.Errorf("resume of an aborted campaign: status %d, %s", status, errOut)
	}
	if _, errOut, status = run("campaign", "show", "c9"); status != exitError || !strings.Contains(errOut, "not found") {
		t.Errorf("show of an unknown campaign: status %d, %s", status, errOut)
	}
}

// A data-key campaign completes under --watch, and its rollback shows
// when it was rolled back and when every device had recovered; a staged
// firmware release is rolled out by a firmware campaign naming it, whose
// show prints the release; device show prints the device's pin and the
// data-key primary it reports.
func TestCampaignKinds(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	online := []string{f.AddDevice(t, "dev-1"), f.AddDevice(t, "dev-2")}
	startAgents(t, online...)
	for _, id := range []string{"dev-1", "dev-2"} {
		deadline := time.Now().Add(30 * time.Second)
		for !f.Broker().Present(id) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never connected", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, errOut, status := run("datakeys", "rotate"); status != exitOK {
		t.Fatalf("datakeys rotate: status %d\n%s%s", status, out, errOut)
	}
	out, errOut, status := run("campaign", "create", "--kind", "data-key", "--stages", "50%,100%", "--device-timeout", "1m", "--watch")
	if status != exitOK || !strings.Contains(out, "data-key") || !strings.Contains(out, "campaign c1 completed: 2 succeeded, 0 failed, 0 away") {
		t.Fatalf("create --kind data-key --watch: status %d\nstdout:\n%s\nstderr:\n%s", status, out, errOut)
	}
	if out, errOut, status = run("campaign", "rollback", "c1"); status != exitOK || !strings.Contains(out, "rolled-back") ||
		!strings.Contains(out, "2 changes undone") {
		t.Fatalf("rollback: status %d\n%s%s", status, out, errOut)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _, status = run("campaign", "show", "c1")
		if status == exitOK && strings.Contains(out, "after the rollback)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("show never says recovered:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out, "rolled back") || strings.Count(out, "cancelled") < 2 {
		t.Errorf("show after the rollback:\n%s", out)
	}

	img := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(img, []byte("build 2"), 0o600); err != nil {
		t.Fatal(err)
	}
	vendor, class := "0a000000-0000-0000-0000-000000000000", "0b000000-0000-0000-0000-000000000000"
	out, errOut, status = run("firmware", "publish", "--staged", "--image", img, "--version", "2", "--uri", "test://fw/2",
		"--vendor", vendor, "--class", class)
	if status != exitOK || !strings.Contains(out, "--release 2") {
		t.Fatalf("firmware publish --staged: status %d\n%s%s", status, out, errOut)
	}
	out, errOut, status = run("campaign", "create", "--kind", "firmware", "--release", "2", "--stages", "100%", "--device-timeout", "1m")
	if status != exitOK || !regexp.MustCompile(`release\s+2\n`).MatchString(out) {
		t.Fatalf("create --kind firmware --release 2: status %d\n%s%s", status, out, errOut)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, _, status = run("device", "show", "dev-1")
		if status == exitOK && regexp.MustCompile(`firmware pinned to\s+2 `).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device show never shows the pin:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !regexp.MustCompile(`data primary reported\s+1\n`).MatchString(out) {
		t.Errorf("device show after the data-key rollback: want v1 reported primary\n%s", out)
	}
	if _, errOut, status = run("campaign", "create", "--kind", "firmware", "--release", "7", "--stages", "100%"); status != exitError ||
		!strings.Contains(errOut, "release 7 is not published") {
		t.Errorf("a firmware campaign of an unknown release: status %d, %s", status, errOut)
	}
}
