package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
)

// succeeded sums a campaign's succeeded devices over its stages.
func succeeded(c adminapi.Campaign) int {
	n := 0
	for _, p := range c.StageProgress {
		n += p.Succeeded
	}
	return n
}

// Issue 11's acceptance for mode "nodes": three fleetd processes, each with
// its embedded broker and its own copy of one initialised data directory,
// on one PostgreSQL and one SoftHSM2 token; 300 agents spread over the
// three brokers. An identity campaign created through node 2 is run by the
// leader (node 2, started first); the leader is SIGKILLed once a quarter
// of the devices succeeded. Its devices move to the other nodes, another
// node takes the lease and the campaign completes with every device at
// version 2; the store holds one issued record per (device, version),
// distinct serials and key ids, and every audit chain verifies. Then a
// revocation asked of node 1 for a device whose session is on node 3
// drops that session within a second, and the device is refused after.
func TestNodesCampaignSurvivesKill(t *testing.T) {
	const n = 300
	began := time.Now()
	dsn := startPostgres(t)
	dir := t.TempDir()
	src, token, env := clusterInit(t, dir, dsn, "nodes")
	nodes := newClusterNodes(t, dir, src, token, dsn, env, "n1", "n2", "n3")
	brokers := []string{nodes[0].mqttAddr, nodes[1].mqttAddr, nodes[2].mqttAddr}
	start := func(nd *clusterNode) {
		nd.start(t, "--mqtt-listen", nd.mqttAddr, "--advertise-mqtt", joinAddrs(brokers...))
	}
	start(nodes[1])
	eventually(t, 10*time.Second, "n2 holding the leader lease", func() bool { return leaseHolder(t, dsn) == "n2" })
	start(nodes[0])
	start(nodes[2])
	admin1, admin2, ctx := nodes[0].admin, nodes[1].admin, context.Background()
	t.Logf("3 nodes up after %v", time.Since(began).Round(time.Millisecond))

	fa := provisionAgents(t, admin1, "nd", n)
	t.Logf("%d devices provisioned through n1 after %v", n, time.Since(began).Round(time.Millisecond))
	fa.run(t, brokers, nil)
	eventually(t, 30*time.Second, "all agents connected", func() bool { return fa.connectedCount() == n })
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		t.Logf("open files in the test process with every agent connected: %d", len(fds))
	}
	st := openPG(t, dsn)
	perNode := func() map[string]int {
		ss, err := st.Sessions(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, s := range ss {
			out[s.Node]++
		}
		return out
	}
	eventually(t, 10*time.Second, "every session recorded", func() bool {
		c := perNode()
		return c["n1"]+c["n2"]+c["n3"] == n
	})
	spread := perNode()
	t.Logf("sessions per node: %v", spread)
	for _, id := range []string{"n1", "n2", "n3"} {
		if spread[id] < n/10 {
			t.Fatalf("node %s holds %d sessions: the fleet is not spread (%v)", id, spread[id], spread)
		}
	}

	camp := createCampaign(t, admin2, "30%,100%", "10%", "", 1, 20*time.Second)
	campStart := time.Now()
	at := waitCampaign(t, admin1, camp.ID, 40*time.Second, "a quarter of the devices succeeded", func(c adminapi.Campaign) bool {
		return succeeded(c) >= n/4
	})
	nodes[1].kill(t)
	killedAt := time.Now()
	t.Logf("n2 (leader) SIGKILLed %v into the campaign, %d succeeded, stage %d", killedAt.Sub(campStart).Round(time.Millisecond),
		succeeded(at), at.Stage+1)

	eventually(t, 10*time.Second, "another node holding the leader lease", func() bool {
		h := leaseHolder(t, dsn)
		return h == "n1" || h == "n3"
	})
	t.Logf("lease taken over %v after the kill by %s", time.Since(killedAt).Round(time.Millisecond), leaseHolder(t, dsn))
	done := waitCampaign(t, admin1, camp.ID, 60*time.Second, "campaign completed", func(c adminapi.Campaign) bool {
		return c.State != adminapi.CampaignStateRunning
	})
	if done.State != adminapi.CampaignStateCompleted {
		t.Fatalf("campaign %s in stage %d (%s), want completed", done.State, done.Stage+1, done.Reason)
	}
	for i, p := range done.StageProgress {
		if p.Failed != 0 {
			t.Errorf("stage %d: %d failed, want 0 (%+v)", i+1, p.Failed, p)
		}
	}
	eventually(t, 20*time.Second, "every device active at version 2", allAt(t, admin1, n, 2))
	t.Logf("campaign completed %v after the kill, %v after it started", time.Since(killedAt).Round(time.Millisecond),
		time.Since(campStart).Round(time.Millisecond))
	eventually(t, 10*time.Second, "all agents connected to n1 or n3", func() bool { return fa.connectedCount() == n })
	moved := perNode()
	t.Logf("sessions per node after the kill: %v", moved)
	if moved["n2"] != 0 {
		t.Errorf("%d sessions still listed on the killed node", moved["n2"])
	}

	// The store: each version issued once, distinct credentials, chains
	// that verify.
	if got := issuedOnce(t, st); got != n {
		t.Errorf("certificates issued: got %d, want %d (one per device)", got, n)
	}
	distinctCredentials(t, st)

	// A revocation asked of node 1 for a device on node 3.
	ss, err := st.Sessions(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for _, id := range fa.ids {
		if s, ok := ss[id]; ok && s.Node == "n3" {
			victim = id
			break
		}
	}
	if victim == "" {
		t.Fatalf("no device has its session on n3: %v", perNode())
	}
	asked := time.Now()
	if _, err := admin1.Revoke(ctx, victim, "test: compromised"); err != nil {
		t.Fatal(err)
	}
	var dropped time.Time
	eventually(t, 5*time.Second, victim+"'s session dropped", func() bool {
		for _, e := range fa.eventsOf(victim, asked) {
			if e.Kind == device.EventDisconnected {
				dropped = e.At
				return true
			}
		}
		return false
	})
	took := dropped.Sub(asked)
	t.Logf("revocation through n1 dropped %s's session on n3 after %v", victim, took.Round(time.Millisecond))
	if took >= time.Second {
		t.Errorf("revocation took %v to drop the session on another node, want < 1 s", took)
	}
	// It tries the brokers again and is refused by every one.
	eventually(t, 10*time.Second, victim+" refused after the revocation", func() bool {
		for _, e := range fa.eventsOf(victim, dropped) {
			if e.Kind == device.EventRefused {
				return true
			}
		}
		return false
	})
	for _, e := range fa.eventsOf(victim, dropped) {
		if e.Kind == device.EventConnected {
			t.Errorf("%s connected again at %v after its revocation", victim, e.At.Sub(dropped))
		}
	}
	if _, err := st.VerifyAudit(ctx); err != nil {
		t.Errorf("audit chains after the revocation: %v", err)
	}
	t.Logf("whole test %v", time.Since(began).Round(time.Millisecond))
}
