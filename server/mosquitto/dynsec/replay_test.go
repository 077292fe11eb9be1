package dynsec_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/mosquitto"
	"github.com/keyfleet/keyfleet/server/mosquitto/dynsec"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// broker is a real Mosquitto with the dynamic-security plugin, seeded as
// fleetctl broker config mosquitto seeds it, and the credentials fleetd's
// admin session uses with it.
type broker struct {
	addr   string
	dynsec string // the plugin's state file, rewritten by Mosquitto at each change
	cert   tls.Certificate
	roots  *x509.CertPool
}

func startBroker(t *testing.T) *broker {
	t.Helper()
	bin := ""
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/bin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			bin = p
		}
	}
	if bin == "" {
		t.Fatal("mosquitto not installed: run `make test`, whose scripts/deps.sh --with-mosquitto installs it")
	}
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	root, err := certs.NewRoot(key, "test fleet", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, key, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// One certificate for both ends, as fleetd's own: CN fleetd (the
	// broker's user name for it), server and client auth, 127.0.0.1.
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleServer, Name: mosquitto.ServerUser},
		PublicKey: &leafKey.PublicKey, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	b := &broker{addr: addr, dynsec: filepath.Join(dir, "dynamic-security.json"),
		cert: tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: leafKey}, roots: x509.NewCertPool()}
	b.roots.AddCert(root)
	conf, err := mosquitto.Config(mosquitto.ConfigOptions{Listen: addr, CAFile: write("ca.pem", "CERTIFICATE", root.Raw),
		CertFile: write("broker.pem", "CERTIFICATE", leaf.Raw), KeyFile: write("broker.key", "EC PRIVATE KEY", keyDER),
		DynsecFile: b.dynsec, User: u.Username})
	if err != nil {
		t.Fatal(err)
	}
	seed, err := mosquitto.SeedFile(protocol.Topics{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.dynsec, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "mosquitto.conf"))
	out, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		out.Close()
		if t.Failed() {
			log, _ := os.ReadFile(out.Name())
			t.Logf("mosquitto log:\n%s", log)
		}
	})
	waitFor(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return b
}

// clients returns the user names the plugin's state file holds.
func (b *broker) clients(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(b.dynsec)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Clients []struct {
			Username string `json:"username"`
		} `json:"clients"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil // being rewritten: read again
	}
	out := map[string]bool{}
	for _, c := range st.Clients {
		out[c.Username] = true
	}
	return out
}

// start runs s's admin session on b until the test ends.
func (b *broker) start(t *testing.T, s *dynsec.Sync) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.Start(ctx, noEngine{}, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &b.cert, nil },
		func() *x509.CertPool { return b.roots }, nil); err != nil {
		t.Fatal(err)
	}
}

// noEngine takes the session closer Start hands the engine; these tests
// call Disconnect themselves, as the engine's Revoke does.
type noEngine struct{}

func (noEngine) SetSessionCloser(rotation.SessionCloser) {}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

// staleReads is the leader's view of the store: its replay's read of
// device victim is taken before the revocation, and returned only after
// the revoking process deleted the client, which is the race a replay can
// lose.
type staleReads struct {
	*store.Bolt
	victim  string
	read    chan struct{} // closed once the stale read is taken
	release chan struct{} // closed by the test once the delete was sent
	once    sync.Once
	armed   atomic.Bool
}

func (s *staleReads) GetDevice(ctx context.Context, id string) (*store.Device, error) {
	d, err := s.Bolt.GetDevice(ctx, id)
	if id == s.victim && s.armed.Load() {
		s.once.Do(func() {
			s.armed.Store(false)
			close(s.read)
			<-s.release
		})
	}
	return d, err
}

// TestGatedReplayRacingRevoke: two fleetd processes (workers) manage one
// Mosquitto. Neither replays at connect while its gate is shut. The
// leader's replay reads a device, another worker revokes it and deletes
// its client, and only then does the replay send the device's client again
// (the race this gate exists for). The leader's Resync of the device, as
// the revoking worker's disconnect mail asks, ends with the client
// deleted, and every other device's client in place.
func TestGatedReplayRacingRevoke(t *testing.T) {
	const n = 40
	const victim = "dev-17"
	b := startBroker(t)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for i := range n {
		if err := st.CreateDevice(ctx, &store.Device{ID: fmt.Sprintf("dev-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var leading atomic.Bool
	view := &staleReads{Bolt: st, victim: victim, read: make(chan struct{}), release: make(chan struct{})}
	leader := dynsec.New(mosquitto.Scheme+b.addr, view, protocol.Topics{}, nil)
	leader.SetReplay(leading.Load)
	worker := dynsec.New(mosquitto.Scheme+b.addr, st, protocol.Topics{}, nil)
	worker.SetReplay(func() bool { return false })
	b.start(t, leader)
	b.start(t, worker)

	// Both sessions up (a device synced through each), and neither
	// replayed: only what was synced exists.
	worker.Resync(ctx, "dev-00")
	leader.Resync(ctx, "dev-01")
	waitFor(t, 5*time.Second, "dev-00 and dev-01 made", func() bool { c := b.clients(t); return c["dev-00"] && c["dev-01"] })
	time.Sleep(300 * time.Millisecond) // a replay at connect would have begun by now
	if c := b.clients(t); len(c) != 3 {
		t.Fatalf("clients after connecting with the gates shut: %v, want fleetd, dev-00 and dev-01 only", c)
	}

	leading.Store(true)
	view.armed.Store(true)
	replayed := make(chan struct{})
	go func() { defer close(replayed); leader.Replay(ctx) }()
	<-view.read // the replay holds victim as not revoked
	if _, err := st.UpdateDevice(ctx, victim, func(d *store.Device) ([]store.Event, error) {
		d.Revoked, d.RevokedAt = true, time.Now()
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	worker.Disconnect(victim) // the revoking worker's delete, acknowledged by the broker
	close(view.release)       // then the replay sends what it read before
	<-replayed
	waitFor(t, 5*time.Second, "the replay done", func() bool { return len(b.clients(t)) == n+1 })
	if !b.clients(t)[victim] {
		t.Fatalf("the race did not happen: %s has no client after the replay", victim)
	}

	leader.Resync(ctx, victim) // what the worker's disconnect mail makes the leader do
	waitFor(t, 5*time.Second, victim+"'s client deleted", func() bool { c := b.clients(t); return c != nil && !c[victim] })
	c := b.clients(t)
	for i := range n {
		if id := fmt.Sprintf("dev-%02d", i); id != victim && !c[id] {
			t.Errorf("%s has no client", id)
		}
	}
}
