package cluster_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/cluster"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/link"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// pg is this test binary's PostgreSQL; every test takes a schema.
var pg *pgtest.Server

func TestMain(m *testing.M) {
	s, err := pgtest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pg = s
	code := fleettest.Main(m) // SoftHSM2 for the fleetd nodes
	if err := s.Stop(); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// openStore opens a pgstore on dsn, closed at the end of the test.
func openStore(t *testing.T, dsn string) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), dsn, pgstore.Options{MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// leaseHolder reads the leader lease's holder straight from the database.
func leaseHolder(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var h string
	if err := conn.QueryRow(ctx, `SELECT holder FROM kf_leases WHERE name = 'leader' AND expires_at > now()`).Scan(&h); err != nil && err != pgx.ErrNoRows {
		t.Fatal(err)
	}
	return h
}

// nodesTable reads the nodes table as "id=mqtt ..." in id order.
func nodesTable(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id, mqtt FROM kf_nodes ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var id, mqtt string
		if err := rows.Scan(&id, &mqtt); err != nil {
			t.Fatal(err)
		}
		out = append(out, id+"="+mqtt)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, " ")
}

// Lead on two nodes of one store: exactly one runs the function; when the
// leader dies without releasing (its store connection gone), the other
// takes over within the TTL and a third of it (its next try).
func TestLeadHandsOver(t *testing.T) {
	dsn := pg.NewSchema(t)
	const ttl = 900 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running atomic.Int32
	var mu sync.Mutex
	var ran []string
	started := make(chan time.Time, 2)
	stores := map[string]*pgstore.Store{}
	var wg sync.WaitGroup
	for _, id := range []string{"n1", "n2"} {
		st := openStore(t, dsn)
		stores[id] = st
		n, err := cluster.Open(ctx, st, cluster.Options{NodeID: id, LeaseTTL: ttl, Logger: fleettest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Lead(ctx, func(ctx context.Context) {
				if running.Add(1) != 1 {
					t.Errorf("%s leads while another node does", id)
				}
				mu.Lock()
				ran = append(ran, id)
				mu.Unlock()
				started <- time.Now()
				<-ctx.Done()
				running.Add(-1)
			})
		}()
	}
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no node leads within 5 s")
	}
	time.Sleep(2 * ttl) // renewals keep the first leader
	mu.Lock()
	first := ran[0]
	if len(ran) != 1 {
		t.Fatalf("leaders %v within two TTLs, want one", ran)
	}
	mu.Unlock()
	if h := leaseHolder(t, dsn); h != first {
		t.Fatalf("lease holder %q, want %q", h, first)
	}
	// The leader's store goes away: it cannot renew, nor release.
	killed := time.Now()
	stores[first].Close()
	select {
	case at := <-started:
		gap := at.Sub(killed)
		t.Logf("handover after %v", gap)
		if max := ttl + ttl/3 + 100*time.Millisecond; gap > max {
			t.Errorf("handover after %v, want within TTL and the next try (%v)", gap, max)
		}
	case <-time.After(ttl + 3*time.Second):
		t.Fatal("no handover")
	}
	mu.Lock()
	if len(ran) != 2 || ran[1] == first {
		t.Fatalf("leaders %v, want the other node second", ran)
	}
	mu.Unlock()
	cancel()
	wg.Wait()
}

// agent runs a real agent on dir until the test ends and reports its
// events on the returned channel.
func agent(t *testing.T, dir string) <-chan device.Event {
	t.Helper()
	events := make(chan device.Event, 256)
	a, err := device.New(device.Options{Dir: dir, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond, StepTimeout: 2 * time.Second,
		OnEvent: func(e device.Event) {
			select {
			case events <- e:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return events
}

// await reads events until one matches, or fails the test after timeout;
// it returns when the match arrived.
func await(t *testing.T, events <-chan device.Event, timeout time.Duration, what string, match func(device.Event) bool) time.Time {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e := <-events:
			if match(e) {
				return time.Now()
			}
		case <-deadline:
			t.Fatalf("no %s within %v", what, timeout)
		}
	}
}

// node starts one fleetd of the cluster on its own copy of the data
// directory (as every node of a deployment gets pki/ and admin/), sharing
// the token and the database.
func node(t *testing.T, base server.Config, src, name, dsn string) (*server.Server, *client.Client) {
	t.Helper()
	cfg := base
	cfg.DataDir = filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(cfg.DataDir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.NodeID = openStore(t, dsn), name
	cfg.MQTTAddr, cfg.AdminAddr, cfg.OpsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	srv, err := server.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	cred, err := client.LoadCredential(datadir.Paths{Dir: cfg.DataDir}.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	return srv, client.New(srv.AdminAddr(), cred)
}

// campaignsCompleted reads keyfleet_campaigns{state="completed"} from a
// node's /metrics: only the node running campaigns observes them.
func campaignsCompleted(t *testing.T, srv *server.Server) string {
	t.Helper()
	resp, err := http.Get("http://" + srv.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `keyfleet_campaigns{state="completed"} `); ok {
			return v
		}
	}
	return "absent"
}

// Two fleetd nodes on one PostgreSQL and one token, a real agent on each:
// a rotation asked of node 1 reaches the agent on node 2 and completes; a
// campaign created on node 1 is run by the lease holder (node 2) alone and
// rotates the devices of both nodes; a revocation asked of node 1 drops
// the session on node 2 within a second.
func TestTwoNodes(t *testing.T) {
	dsn := pg.NewSchema(t)
	f := fleettest.InitFleet(t, nil)
	ctx := context.Background()
	srv2, _ := node(t, f.Config, f.Config.DataDir, "n2", dsn)
	deadline := time.Now().Add(5 * time.Second)
	for leaseHolder(t, dsn) != "n2" { // n2 leads: campaigns run away from the node that takes them
		if time.Now().After(deadline) {
			t.Fatal("n2 did not take the leader lease within 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv1, admin1 := node(t, f.Config, f.Config.DataDir, "n1", dsn)

	keystores := filepath.Join(t.TempDir(), "devices")
	provisionOn := func(id string, srv *server.Server) <-chan device.Event {
		dir := filepath.Join(keystores, id)
		if _, err := provision.Device(ctx, admin1, id, dir, srv.MQTTAddr()); err != nil {
			t.Fatal(err)
		}
		ev := agent(t, dir)
		await(t, ev, 10*time.Second, id+" connected", func(e device.Event) bool { return e.Kind == device.EventConnected })
		return ev
	}
	ev2 := provisionOn("dev-on-n2", srv2)
	ev1 := provisionOn("dev-on-n1", srv1)
	if !srv2.Broker().Present("dev-on-n2") || srv1.Broker().Present("dev-on-n2") {
		t.Fatal("dev-on-n2 is not connected to node 2 alone")
	}
	// Each broker reports its sessions (broker.Options.OnSession) to the
	// sessions table.
	look := openStore(t, dsn)
	sessionsAre := func(want map[string]string) {
		t.Helper()
		var got map[string]store.Session
		deadline := time.Now().Add(2 * time.Second)
		for {
			var err error
			if got, err = look.Sessions(ctx, nil); err != nil {
				t.Fatal(err)
			}
			same := len(got) == len(want)
			for d, n := range want {
				same = same && got[d].Node == n
			}
			if same {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sessions table %v, want devices on nodes %v", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	sessionsAre(map[string]string{"dev-on-n2": "n2", "dev-on-n1": "n1"})
	// The nodes table names each node's broker (taken from the embedded
	// broker at the heartbeat after it listens).
	want := fmt.Sprintf("n1=%s n2=%s", srv1.MQTTAddr(), srv2.MQTTAddr())
	deadline = time.Now().Add(3 * time.Second)
	for got := nodesTable(t, dsn); got != want; got = nodesTable(t, dsn) {
		if time.Now().After(deadline) {
			t.Fatalf("nodes table %q, want %q", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A rotation through node 1 for the device on node 2.
	start := time.Now()
	if _, err := admin1.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"dev-on-n2"}}); err != nil {
		t.Fatal(err)
	}
	at := await(t, ev2, 20*time.Second, "activation of version 2", func(e device.Event) bool {
		return e.Kind == device.EventActivated && e.Version == 2
	})
	t.Logf("rotation asked of node 1 activated on node 2 after %v", at.Sub(start))

	// A campaign created on node 1; n2 holds the lease.
	c, err := admin1.CreateCampaign(ctx, adminapi.CampaignRequest{Kind: adminapi.CampaignKindIdentity, Stages: []float64{1},
		DeviceTimeoutSeconds: 30})
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		got, err := admin1.Campaign(ctx, c.ID, false)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != adminapi.CampaignStateRunning {
			if got.State != adminapi.CampaignStateCompleted {
				t.Fatalf("campaign ended %s: %+v", got.State, got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign still running after 30 s: %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	await(t, ev1, 5*time.Second, "dev-on-n1 at version 2", func(e device.Event) bool { return e.Kind == device.EventActivated && e.Version == 2 })
	await(t, ev2, 5*time.Second, "dev-on-n2 at version 3", func(e device.Event) bool { return e.Kind == device.EventActivated && e.Version == 3 })
	// The runner reports the campaigns it read at its next step.
	deadline = time.Now().Add(3 * time.Second)
	for campaignsCompleted(t, srv2) != "1" {
		if time.Now().After(deadline) {
			t.Fatalf("the leader n2 does not report the completed campaign: %s", campaignsCompleted(t, srv2))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if other := campaignsCompleted(t, srv1); other == "1" {
		t.Fatalf("n1, not leading, reports %s completed campaign: its runner ran too", other)
	}

	// A revocation through node 1 for the device on node 2.
	for len(ev2) > 0 {
		<-ev2
	}
	start = time.Now()
	if _, err := admin1.Revoke(ctx, "dev-on-n2", "test"); err != nil {
		t.Fatal(err)
	}
	gone := await(t, ev2, 5*time.Second, "disconnect of the revoked device", func(e device.Event) bool { return e.Kind == device.EventDisconnected })
	took := gone.Sub(start)
	t.Logf("revocation asked of node 1 dropped the session on node 2 after %v", took)
	if took > time.Second {
		t.Errorf("revoked device's session dropped after %v, want within 1 s", took)
	}
	await(t, ev2, 10*time.Second, "refusal of the revoked device", func(e device.Event) bool { return e.Kind == device.EventRefused })
	if srv2.Broker().Present("dev-on-n2") {
		t.Error("the revoked device is connected to node 2 again")
	}
	sessionsAre(map[string]string{"dev-on-n1": "n1"})
}

// Broadcast reaches every other live node's reload hooks through mail,
// woken at once on PostgreSQL: "policy" to PolicyReload, anything else to
// OnReload.
func TestBroadcastReloads(t *testing.T) {
	dsn := pg.NewSchema(t)
	ctx := context.Background()
	policy := make(chan time.Time, 4)
	other := make(chan string, 4)
	b, err := cluster.Open(ctx, openStore(t, dsn), cluster.Options{NodeID: "b", Logger: fleettest.Logger(t), PolicyEvery: time.Hour,
		PolicyReload: func(context.Context) (bool, error) { policy <- time.Now(); return true, nil },
		OnReload:     func(_ context.Context, what string) { other <- what }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var l link.Link // never connected: reload mail publishes nothing
	b.Publisher(&l)
	a, err := cluster.Open(ctx, openStore(t, dsn), cluster.Options{NodeID: "a", Logger: fleettest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	start := time.Now()
	if err := a.Broadcast(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-policy:
		t.Logf("policy reload on b %v after the broadcast", at.Sub(start))
		if at.Sub(start) > time.Second {
			t.Errorf("policy reloaded after %v, want within 1 s", at.Sub(start))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("b did not reload its policy")
	}
	if err := a.Broadcast(ctx, "anchors"); err != nil {
		t.Fatal(err)
	}
	select {
	case what := <-other:
		if what != "anchors" {
			t.Fatalf("OnReload(%q), want anchors", what)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("b's OnReload was not called")
	}
	select {
	case <-policy:
		t.Fatal("a broadcast reached the policy reload twice, or a's own")
	case <-time.After(100 * time.Millisecond):
	}
}
