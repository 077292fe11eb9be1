package e2e

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/mosquitto"
)

// Issue 11's acceptance for mode "workers": three fleetd processes without
// a broker share one real Mosquitto's uplinks through $share/fleetd/...,
// on one PostgreSQL and one token. Rotations of 60 devices are requested
// through worker 1; half the devices hold after sending their enrolment
// until worker 2, the leader, is SIGKILLed with at least 15 certificates
// issued. Every device converges through the other two workers, no
// version is issued twice, and every audit chain verifies. Then a device
// revoked through worker 3 is dropped by Mosquitto and is not served again,
// also after the leader left too and the last worker took the lease and
// replayed the fleet to the broker.
func TestWorkersOnMosquitto(t *testing.T) {
	const n = 60
	began := time.Now()
	dsn := startPostgres(t)
	dir := t.TempDir()
	src, token, env := clusterInit(t, dir, dsn, "workers")
	mq := fleettest.FreeAddr(t)
	startMosquittoWith(t, &fleettest.Fleet{Config: server.Config{DataDir: src}}, mq, "", nil)
	workers := newClusterNodes(t, dir, src, token, dsn, env, "w1", "w2", "w3")
	external := mosquitto.Scheme + mq
	workers[1].start(t, "--external-broker", external)
	eventually(t, 10*time.Second, "w2 holding the leader lease", func() bool { return leaseHolder(t, dsn) == "w2" })
	workers[0].start(t, "--external-broker", external)
	workers[2].start(t, "--external-broker", external)
	admin1, ctx := workers[0].admin, context.Background()
	t.Logf("Mosquitto and 3 workers up after %v", time.Since(began).Round(time.Millisecond))

	fa := provisionAgents(t, admin1, "wk", n)
	// Even devices stop after sending their enrolment until the gate opens:
	// their certificates are issued by whichever worker took the enrolment,
	// and reach them (or are asked for again) after the kill.
	gate := make(chan struct{})
	var held atomic.Int32
	fa.run(t, []string{mq}, func(i int, o *device.Options) {
		// Uplinks a worker had taken when it died are lost with its clean
		// session: a device whose confirmation was among them is caught
		// up at its next report (hello), as after any lost message.
		o.StepTimeout, o.ReportEvery = 2*time.Second, 3*time.Second
		if i%2 != 0 {
			return
		}
		var once sync.Once
		o.Failpoint = func(step string) {
			if step == "after-enroll" {
				once.Do(func() { held.Add(1); <-gate })
			}
		}
	})
	var opened sync.Once
	release := func() { opened.Do(func() { close(gate) }) }
	t.Cleanup(release)
	eventually(t, 30*time.Second, "all agents connected to Mosquitto", func() bool { return fa.connectedCount() == n })
	t.Logf("%d devices provisioned through w1 and connected after %v", n, time.Since(began).Round(time.Millisecond))

	resp, err := admin1.Rotate(ctx, adminapi.RotateRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Rotations) != n {
		t.Fatalf("rotations requested: got %d, want %d", len(resp.Rotations), n)
	}
	asked := time.Now()
	st := openPG(t, dsn)
	eventually(t, 30*time.Second, "15 certificates issued and every even device held after its enrolment", func() bool {
		return held.Load() == n/2 && issuedAudit(t, st) >= 15
	})
	issuedAtKill := issuedAudit(t, st)
	workers[1].kill(t)
	killedAt := time.Now()
	release()
	t.Logf("w2 (leader) SIGKILLed %v after the request, %d issued", killedAt.Sub(asked).Round(time.Millisecond), issuedAtKill)
	eventually(t, 30*time.Second, "every device active at version 2", allAt(t, admin1, n, 2))
	t.Logf("all %d devices at version 2 %v after the kill", n, time.Since(killedAt).Round(time.Millisecond))
	if got := issuedOnce(t, st); got != n {
		t.Errorf("certificates issued: got %d, want %d (one per device)", got, n)
	}
	distinctCredentials(t, st)
	eventually(t, 10*time.Second, "another worker holding the leader lease", func() bool {
		h := leaseHolder(t, dsn)
		return h == "w1" || h == "w3"
	})

	// A revocation through worker 3: Mosquitto drops the device at once
	// (its dynsec client deleted) and refuses it from then on.
	victim := fa.ids[1]
	revokedAt := time.Now()
	if _, err := workers[2].admin.Revoke(ctx, victim, "test: compromised"); err != nil {
		t.Fatal(err)
	}
	var dropped time.Time
	eventually(t, 5*time.Second, victim+"'s session dropped", func() bool {
		for _, e := range fa.eventsOf(victim, revokedAt) {
			if e.Kind == device.EventDisconnected {
				dropped = e.At
				return true
			}
		}
		return false
	})
	t.Logf("revocation through w3 dropped %s at Mosquitto after %v", victim, dropped.Sub(revokedAt).Round(time.Millisecond))

	// The leader leaves too: the last worker takes the lease and replays
	// the fleet to Mosquitto (its admin session connected while another
	// led, so it did not replay then), which must not give the revoked
	// device its client back.
	leader := leaseHolder(t, dsn)
	last := workers[0]
	if leader == "w1" {
		workers[0].kill(t)
		last = workers[2]
	} else {
		workers[2].kill(t)
	}
	replays := func() int { return strings.Count(last.proc.out.String(), "fleet replayed to the broker") }
	before := replays()
	replayFrom := time.Now()
	eventually(t, 10*time.Second, last.id+" holding the leader lease", func() bool { return leaseHolder(t, dsn) == last.id })
	eventually(t, 10*time.Second, last.id+" replaying the fleet to Mosquitto", func() bool { return replays() > before })
	t.Logf("%s left; %s took the lease and replayed the fleet %v later", leader, last.id, time.Since(replayFrom).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the agent retries every second at most
	for _, e := range fa.eventsOf(victim, dropped) {
		if e.Kind == device.EventConnected {
			t.Errorf("%s served again %v after its revocation", victim, e.At.Sub(dropped))
		}
	}
	// The others are still served by the last worker.
	if _, err := last.admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{fa.ids[2]}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, fa.ids[2]+" at version 3 through the last worker", func() bool {
		return activeVersions(t, last.admin)[fa.ids[2]] == 3
	})
	if _, err := st.VerifyAudit(ctx); err != nil {
		t.Errorf("audit chains: %v", err)
	}
	t.Logf("whole test %v", time.Since(began).Round(time.Millisecond))
}
