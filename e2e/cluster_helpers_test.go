package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/pgtest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// sharedPostgres is the PostgreSQL server the cluster tests share: started
// by the first that needs it (initdb costs seconds, a database a fraction
// of one), stopped by TestMain after the last test.
type sharedPostgres struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

var shared sharedPostgres

// stop stops the server if a test started it.
func (s *sharedPostgres) stop() {
	if s.srv != nil {
		if err := s.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: stopping PostgreSQL:", err)
		}
	}
}

// startPostgres returns a fresh database's DSN on the shared PostgreSQL
// server (a real one from Debian's packages, pgtest), starting it first.
func startPostgres(t *testing.T) string {
	t.Helper()
	shared.once.Do(func() { shared.srv, shared.err = pgtest.Start() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv.NewDatabase(t)
}

// clusterInit runs `fleetd init --store DSN` once, with a new SoftHSM2
// token every node then opens, and returns the initialised data directory
// and the environment (PIN) the nodes run with.
func clusterInit(t *testing.T, dir, dsn, prefix string) (data, token string, env []string) {
	t.Helper()
	token = fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e9)
	data, env = filepath.Join(dir, "init"), []string{"KEYFLEET_HSM_PIN=cluster-test-pin"}
	cmd := exec.Command(filepath.Join(binaries(t), "fleetd"), "init", "--create-token", "--data", data, "--token", token, "--store", dsn)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fleetd init --store: %v\n%s", err, out)
	}
	return data, token, env
}

// clusterNode is one fleetd process of a cluster: its own copy of the
// initialised data directory (as on a machine of its own), the shared
// token and the shared database.
type clusterNode struct {
	id                           string
	data                         string
	mqttAddr, adminAddr, opsAddr string
	args                         []string
	env                          []string
	proc                         *proc
	admin                        *client.Client
}

// newClusterNodes makes a node of each id (newClusterNode), their
// addresses picked together so that no two nodes are given one port.
func newClusterNodes(t *testing.T, dir, src, token, dsn string, env []string, ids ...string) []*clusterNode {
	t.Helper()
	addrs := fleettest.FreeAddrs(t, 3*len(ids))
	nodes := make([]*clusterNode, len(ids))
	for i, id := range ids {
		nodes[i] = newClusterNode(t, dir, src, id, token, dsn, env, addrs[3*i:3*i+3])
	}
	return nodes
}

// newClusterNode copies the initialised data directory for node id, to
// serve MQTT, admin and ops on addrs; start runs it.
func newClusterNode(t *testing.T, dir, src, id, token, dsn string, env []string, addrs []string) *clusterNode {
	t.Helper()
	n := &clusterNode{id: id, data: filepath.Join(dir, id), env: env,
		mqttAddr: addrs[0], adminAddr: addrs[1], opsAddr: addrs[2]}
	if err := os.CopyFS(n.data, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	n.args = []string{"run", "--data", n.data, "--token", token, "--store", dsn, "--node-id", id,
		"--admin-listen", n.adminAddr, "--ops-listen", n.opsAddr, "--grace", "1h", "--log-level", "info"}
	cred, err := client.LoadCredential(datadir.Paths{Dir: n.data}.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	n.admin = client.New(n.adminAddr, cred)
	return n
}

// start runs the node with extra flags and waits until it is ready.
func (n *clusterNode) start(t *testing.T, extra ...string) {
	t.Helper()
	n.proc = start(t, n.env, filepath.Join(binaries(t), "fleetd"), append(n.args, extra...)...)
	ctx := context.Background()
	eventually(t, 30*time.Second, n.id+" up", func() bool { _, err := n.admin.Status(ctx); return err == nil })
	eventually(t, 30*time.Second, n.id+" ready", func() bool { return httpStatus("http://"+n.opsAddr+"/readyz") == 200 })
}

// kill SIGKILLs the node and waits until it is gone.
func (n *clusterNode) kill(t *testing.T) {
	t.Helper()
	if err := n.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := n.proc.wait(t, 10*time.Second); !killedBySIGKILL(err) {
		t.Fatalf("%s exit: got %v, want killed by SIGKILL", n.id, err)
	}
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

// openPG opens the cluster's store from the test, as another reader.
func openPG(t *testing.T, dsn string) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), dsn, pgstore.Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// fleetAgents is a fleet of in-process agents with in-memory keystores,
// whose connection events the test follows.
type fleetAgents struct {
	ids       []string
	stores    map[string]*device.MemStorage
	connected sync.Map // id -> *atomic.Bool
	mu        sync.Mutex
	events    map[string][]device.Event // connected, disconnected and refused, per device
}

// provisionAgents registers n devices through c, four at a time, each
// keystore in memory.
func provisionAgents(t *testing.T, c *client.Client, prefix string, n int) *fleetAgents {
	t.Helper()
	fa := &fleetAgents{stores: map[string]*device.MemStorage{}, events: map[string][]device.Event{}}
	for i := range n {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		fa.ids = append(fa.ids, id)
		fa.stores[id] = device.NewMemStorage()
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := atomic.Int64{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				id := fa.ids[i]
				if _, err := provision.To(ctx, c, id, fa.stores[id], ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return fa
}

// run starts every agent; agent i is given the brokers rotated to start
// at i mod len(brokers), every other round in the reverse order. The agent
// starts at a random one of them, which spreads the fleet; the order is
// where it fails over to, so the devices of a lost broker spread over all
// the others instead of all moving to the next one.
func (fa *fleetAgents) run(t *testing.T, brokers []string, mod func(i int, o *device.Options)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	log := fleettest.Logger(t)
	for i, id := range fa.ids {
		on := &atomic.Bool{}
		fa.connected.Store(id, on)
		m := len(brokers)
		list := make([]string, 0, m)
		for j := range m {
			list = append(list, brokers[(i+j)%m])
		}
		if (i/m)%2 == 1 {
			slices.Reverse(list[1:])
		}
		o := device.Options{Storage: fa.stores[id], Brokers: list,
			Logger: log, ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second, StepTimeout: 3 * time.Second,
			OnEvent: func(e device.Event) {
				switch e.Kind {
				case device.EventConnected:
					on.Store(true)
				case device.EventDisconnected:
					on.Store(false)
				case device.EventRefused:
				default:
					return
				}
				fa.mu.Lock()
				fa.events[id] = append(fa.events[id], e)
				fa.mu.Unlock()
			}}
		if mod != nil {
			mod(i, &o)
		}
		a, err := device.New(o)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// connectedCount is how many agents hold a session now.
func (fa *fleetAgents) connectedCount() int {
	n := 0
	fa.connected.Range(func(_, v any) bool {
		if v.(*atomic.Bool).Load() {
			n++
		}
		return true
	})
	return n
}

// eventsOf returns the device's connection events since from.
func (fa *fleetAgents) eventsOf(id string, from time.Time) []device.Event {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	var out []device.Event
	for _, e := range fa.events[id] {
		if !e.At.Before(from) {
			out = append(out, e)
		}
	}
	return out
}

// issuedAudit counts the audit's issued records.
func issuedAudit(t *testing.T, st store.Store) int {
	t.Helper()
	n := 0
	if err := st.ForEachAudit(context.Background(), 0, func(r *store.AuditRecord) error {
		if r.Action == "issued" {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// distinctCredentials checks in the store that no two identity versions
// of any devices share a certificate serial or a key id, and that each
// device has version 2 active with a certificate.
func distinctCredentials(t *testing.T, st store.Store) {
	t.Helper()
	serials, keys := map[string]string{}, map[string]string{}
	if err := st.ForEachDevice(context.Background(), func(d *store.Device) error {
		slot := d.Slots[protocol.SlotIdentity]
		if slot == nil || slot.Version(2) == nil || len(slot.Version(2).Cert) == 0 {
			t.Errorf("%s: no certificate for identity version 2 in the store", d.ID)
			return nil
		}
		for _, v := range slot.Versions {
			if v.Serial == "" {
				continue
			}
			who := fmt.Sprintf("%s v%d", d.ID, v.Version)
			if prev, ok := serials[v.Serial]; ok {
				t.Errorf("serial %s issued to %s and %s", v.Serial, prev, who)
			}
			serials[v.Serial] = who
			k := fmt.Sprintf("%x", v.KeyID)
			if prev, ok := keys[k]; ok {
				t.Errorf("key id %s held by %s and %s", k, prev, who)
			}
			keys[k] = who
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// joinAddrs is a comma-separated broker list.
func joinAddrs(addrs ...string) string { return strings.Join(addrs, ",") }
