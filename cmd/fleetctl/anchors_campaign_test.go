package main

import (
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// campaign create --kind anchors --roles rolls the next set out and
// publishes it when it completes (anchors show names it); rollback of
// an anchors campaign exits 1 saying it has none.
func TestAnchorsCampaignCommands(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	startAgents(t, f.AddDevice(t, "dev-1"))
	deadline := time.Now().Add(30 * time.Second)
	for !f.Broker().Present("dev-1") {
		if time.Now().After(deadline) {
			t.Fatal("dev-1 never connected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, errOut, status := run("campaign", "create", "--kind", "anchors", "--roles", "update", "--stages", "100%",
		"--device-timeout", "1m", "--watch")
	if status != exitOK || !strings.Contains(out, "campaign c1 completed: 1 succeeded, 0 failed, 0 away") {
		t.Fatalf("create --kind anchors --watch: status %d\nstdout:\n%s\nstderr:\n%s", status, out, errOut)
	}
	if out, _, status = run("anchors", "show"); status != exitOK || !strings.Contains(out, "version       2") ||
		strings.Contains(out, "prepared") {
		t.Errorf("anchors show after the campaign: status %d\n%s", status, out)
	}
	if _, errOut, status = run("campaign", "rollback", "c1"); status != exitError || !strings.Contains(errOut, "no rollback, abort it instead") {
		t.Errorf("rollback of an anchors campaign: status %d, %s", status, errOut)
	}
}
