package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/mosquitto"
)

// currentUser keeps Mosquitto, when started as root, from switching to its
// own user, who could not read the test's private files.
func currentUser(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func mosquittoPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/bin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Fatal("mosquitto not installed: run `make test`, which installs it (apt-get install mosquitto)")
	}
	return p
}

// startMosquitto runs Mosquitto with the configuration fleetctl broker
// config mosquitto generates (the dynamic-security plugin seeded for
// fleetd, retained publishes off), fleetd's certificate as the broker's,
// and returns its address once it listens.
func startMosquitto(t *testing.T, f *fleettest.Fleet) string {
	t.Helper()
	addr := fleettest.FreeAddr(t)
	startMosquittoAt(t, f, addr, "")
	return addr
}

// startMosquittoAt starts Mosquitto at addr with a new plugin state, and
// returns the process. With tlsDir, the broker uses the broker.pem,
// broker.key and ca.pem there (fleetctl broker cert's); else fleetd's own.
func startMosquittoAt(t *testing.T, f *fleettest.Fleet, addr, tlsDir string) *proc {
	t.Helper()
	return startMosquittoWith(t, f, addr, tlsDir, nil)
}

// startMosquittoWith is startMosquittoAt with mod applied to the
// configuration's options last.
func startMosquittoWith(t *testing.T, f *fleettest.Fleet, addr, tlsDir string, mod func(*mosquitto.ConfigOptions)) *proc {
	t.Helper()
	dir := t.TempDir()
	p := datadir.Paths{Dir: f.Config.DataDir}
	o := mosquitto.ConfigOptions{Listen: addr, CAFile: p.CACert(), CertFile: p.ServerCert(),
		KeyFile: p.ServerKey(), DynsecFile: filepath.Join(dir, "dynamic-security.json"), User: currentUser(t)}
	if tlsDir != "" {
		o.CAFile, o.CertFile, o.KeyFile = filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "broker.pem"), filepath.Join(tlsDir, "broker.key")
	}
	if mod != nil {
		mod(&o)
	}
	conf, err := mosquitto.Config(o)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := mosquitto.SeedFile(f.Config.Topics)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dynamic-security.json"), seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	pr := start(t, nil, mosquittoPath(t), "-c", filepath.Join(dir, "mosquitto.conf"))
	eventually(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return pr
}

// fleetd with Mosquitto instead of its embedded broker: the same engine
// code path rotates devices through a broker it does not control, only
// keeps in step (mosquitto://).
func TestRotationThroughMosquitto(t *testing.T) {
	const n = 5
	f := fleettest.InitFleet(t, nil)
	addr := startMosquitto(t, f)
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Restart(t)
	if f.Broker() != nil {
		t.Fatal("embedded broker started despite ExternalBroker")
	}
	var dirs []string
	for i := 0; i < n; i++ {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("mq-%d", i)))
	}
	runAgents(t, dirs, nil)
	ctx := context.Background()
	for _, v := range []uint32{2, 3} {
		if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, fmt.Sprintf("all at v%d through Mosquitto", v), allAt(t, f.Admin, n, v))
	}
	// fleetd cannot see Mosquitto's sessions: device show says so.
	if d, err := f.Admin.Device(ctx, "mq-0"); err != nil || d.Connection != adminapi.ConnectionUnknown {
		t.Errorf("device show through Mosquitto: connection %q, %v; want %q", d.Connection, err, adminapi.ConnectionUnknown)
	}
	// Mosquitto enforces the same ACL: a device that subscribes to another
	// device's commands gets none of them (the plugin refuses the
	// subscription; were it granted, each delivery would be refused).
	ks, err := device.OpenKeystore(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(3)
	if err != nil {
		t.Fatal(err)
	}
	var topics protocol.Topics
	var leaked atomic.Int32
	c, err := mqttc.Dial(ctx, mqttc.Options{Broker: addr, ClientID: "mq-0-probe", Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
		Subscriptions: []string{topics.Down("mq-1")},
		OnMessage:     func(string, []byte) { leaked.Add(1) },
	})
	if err != nil && !errors.Is(err, mqttc.ErrDenied) {
		t.Fatal(err)
	}
	if c != nil {
		defer c.Close()
	}
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"mq-1"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "mq-1 at v4", func() bool { return activeVersions(t, f.Admin)["mq-1"] == 4 })
	if n := leaked.Load(); n != 0 {
		t.Errorf("another device received %d of mq-1's commands through Mosquitto", n)
	}
	if got := issuedOnce(t, f.Store()); got != 2*n+1 {
		t.Errorf("issued: got %d, want %d", got, 2*n+1)
	}
}

// mqttAs opens an MQTT session at addr with a device's identity version
// from its directory, as the agent would; lost receives the time the
// broker dropped it.
func mqttAs(t *testing.T, addr, dir, id string, version uint32, subs []string, lost chan<- time.Time) (*mqttc.Conn, error) {
	t.Helper()
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(version)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mqttc.Dial(context.Background(), mqttc.Options{Broker: addr, ClientID: id, Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
		Subscriptions: subs,
		OnLost: func(error) {
			if lost != nil {
				lost <- time.Now()
			}
		},
	})
	if c != nil {
		t.Cleanup(c.Close)
	}
	return c, err
}

// Mosquitto, with the generated configuration and fleetd keeping its
// dynamic-security plugin in step, enforces what the embedded broker does:
// a device reaches only its own topics, a revoked device's open session is
// dropped within a second (measured over revocationRuns revocations) and
// it is allowed nothing after, and a retained publish is refused. The
// broker's certificate is the one fleetd issues through the admin API (as
// fleetctl broker cert asks), from a first start with the embedded broker.
func TestMosquittoEnforcement(t *testing.T) {
	const revocationRuns = 20
	ctx := context.Background()
	f := fleettest.StartFleet(t, nil)
	tlsDir := brokerCert(t, f.Admin, "127.0.0.1")
	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}
	addr := fleettest.FreeAddr(t)
	startMosquittoAt(t, f, addr, tlsDir)
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Restart(t)
	var topics protocol.Topics
	dirA, dirB := f.AddDevice(t, "dev-a"), f.AddDevice(t, "dev-b")

	// fleetd's own view of the uplinks: an observer with fleetd's certificate.
	p := datadir.Paths{Dir: f.Config.DataDir}
	srvCert, err := tls.LoadX509KeyPair(p.ServerCert(), p.ServerKey())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := device.OpenKeystore(dirA)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 16)
	obs, err := mqttc.Dial(ctx, mqttc.Options{Broker: addr, ClientID: "fleetd-observer", Timeout: 5 * time.Second,
		TLS:           &tls.Config{Certificates: []tls.Certificate{srvCert}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
		Subscriptions: []string{topics.Root() + "/d/+/up"},
		OnMessage:     func(topic string, payload []byte) { seen <- topic + " " + string(payload) },
	})
	if err != nil {
		t.Fatalf("observer with fleetd's certificate: %v", err)
	}
	defer obs.Close()

	// A reaches its own topics, not B's.
	lostA := make(chan time.Time, 1)
	a, err := mqttAs(t, addr, dirA, "dev-a", 1, []string{topics.Down("dev-a"), topics.Broadcast()}, lostA)
	if err != nil {
		t.Fatalf("dev-a on its own topics: %v", err)
	}
	if _, err := mqttAs(t, addr, dirA, "dev-a-probe", 1, []string{topics.Down("dev-b")}, nil); !errors.Is(err, mqttc.ErrDenied) {
		t.Errorf("dev-a subscribing to dev-b's down topic: %v, want %v", err, mqttc.ErrDenied)
	}
	if _, err := mqttAs(t, addr, dirA, "dev-a-probe", 1, []string{topics.ReenrollDown("dev-b")}, nil); !errors.Is(err, mqttc.ErrDenied) {
		t.Errorf("dev-a subscribing to dev-b's re-enrolment answers: %v, want %v", err, mqttc.ErrDenied)
	}
	for _, topic := range []string{topics.Up("dev-b"), topics.Down("dev-b"), topics.Reenroll("dev-b"), topics.Up("dev-a")} {
		if err := a.Publish(ctx, topic, []byte("from-a")); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	select { // the broker keeps order: A's own uplink, published last, comes first and alone
	case got := <-seen:
		if got != topics.Up("dev-a")+" from-a" {
			t.Errorf("fleetd saw %q first; want only dev-a's own uplink", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dev-a's own uplink never reached fleetd")
	}
	select {
	case got := <-seen:
		t.Errorf("fleetd saw %q: dev-a wrote another device's topic", got)
	case <-time.After(200 * time.Millisecond):
	}

	// A retained publish is refused: Mosquitto drops the session.
	_ = a.PublishRetained(ctx, topics.Up("dev-a"), []byte("retained"))
	select {
	case <-lostA:
	case <-time.After(5 * time.Second):
		t.Error("a retained publish did not end dev-a's session")
	}
	select {
	case got := <-seen:
		t.Errorf("fleetd saw %q: the retained publish went through", got)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := mqttAs(t, addr, dirB, "dev-b", 1, []string{topics.Down("dev-b")}, nil); err != nil {
		t.Fatalf("dev-b before any revocation: %v", err)
	}

	// Revocations: each open session is dropped, and timed from the admin
	// call to the moment the device's connection ends.
	var dirs []string
	for i := 0; i < revocationRuns; i++ {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("rv-%02d", i)))
	}
	var lat []time.Duration
	for i, dir := range dirs {
		id := fmt.Sprintf("rv-%02d", i)
		lost := make(chan time.Time, 1)
		if _, err := mqttAs(t, addr, dir, id, 1, []string{topics.Down(id)}, lost); err != nil {
			t.Fatalf("%s before its revocation: %v", id, err)
		}
		start := time.Now()
		if _, err := f.Admin.Revoke(ctx, id, "mosquitto test"); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-lost:
			lat = append(lat, at.Sub(start))
		case <-time.After(5 * time.Second):
			t.Fatalf("%s's session still open 5 s after its revocation", id)
		}
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[(len(lat)*99+99)/100-1]
	t.Logf("revoked session dropped after: p50 %v, p99 %v, max %v over %d revocations", p50, p99, lat[len(lat)-1], len(lat))
	if p99 > time.Second {
		t.Errorf("p99 of the drop after revocation %v, want at most 1 s", p99)
	}
	// A revoked device is refused from then on: it may open a TLS session
	// but is allowed no topic.
	for _, i := range []int{0, revocationRuns - 1} {
		id := fmt.Sprintf("rv-%02d", i)
		if _, err := mqttAs(t, addr, dirs[i], id, 1, []string{topics.Down(id)}, nil); !errors.Is(err, mqttc.ErrDenied) {
			t.Errorf("revoked %s subscribing to its own down topic: %v, want %v", id, err, mqttc.ErrDenied)
		}
	}
	if _, err := mqttAs(t, addr, dirB, "dev-b", 1, []string{topics.Down("dev-b")}, nil); err != nil {
		t.Errorf("dev-b, not revoked, after the others' revocations: %v", err)
	}
}

// fleetd replays the fleet whenever its admin session connects: a broker
// that lost its plugin state (here restarted with a new one) learns every
// device again, revoked ones stay refused.
func TestMosquittoReplay(t *testing.T) {
	f := fleettest.InitFleet(t, nil)
	addr := fleettest.FreeAddr(t)
	first := startMosquittoAt(t, f, addr, "")
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Restart(t)
	ctx := context.Background()
	var topics protocol.Topics
	dirA, dirB := f.AddDevice(t, "dev-a"), f.AddDevice(t, "dev-b")
	if _, err := f.Admin.Revoke(ctx, "dev-b", "mosquitto test"); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Process.Kill()
	first.done <- <-first.done // the cleanup reads it again
	startMosquittoAt(t, f, addr, "")
	eventually(t, 15*time.Second, "dev-a allowed its topics at the new broker", func() bool {
		_, err := mqttAs(t, addr, dirA, "dev-a", 1, []string{topics.Down("dev-a")}, nil)
		return err == nil
	})
	if _, err := mqttAs(t, addr, dirB, "dev-b", 1, []string{topics.Down("dev-b")}, nil); !errors.Is(err, mqttc.ErrDenied) {
		t.Errorf("revoked dev-b at the new broker: %v, want %v", err, mqttc.ErrDenied)
	}
}

// brokerCert has fleetd issue a broker certificate for names, as fleetctl
// broker cert does, and returns the directory with broker.pem, broker.key
// and ca.pem.
func brokerCert(t *testing.T, admin *client.Client, names ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := admin.BrokerCert(context.Background(), adminapi.BrokerCertRequest{CSR: csr, Names: names})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"broker.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		"broker.pem": res.Certificate, "ca.pem": res.CA} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// An anchor rotation keeps Mosquitto's CA and CRL files current: fleetd
// writes --broker-ca-file with every root, and --broker-crl-file with a
// list of each, at start and after the rotation, and runs --broker-reload, so that a device whose new certificate chains only
// to the new root connects, and one still on the old root keeps
// connecting. Mosquitto 2.0 re-reads its cafile only when it starts (a
// SIGHUP reloads its own certificate, not the CA store: with kill -HUP
// here, the new root's device is refused), so the reload is a restart, as
// systemctl restart mosquitto does: here the command stops it and the test
// starts it again on the same address.
func TestMosquittoCAFileFollowsAnchors(t *testing.T) {
	ctx := context.Background()
	f := fleettest.InitFleet(t, nil)
	p := datadir.Paths{Dir: f.Config.DataDir}
	caFile := filepath.Join(t.TempDir(), "broker-ca.pem")
	first, err := os.ReadFile(p.CACert()) // Mosquitto starts before fleetd writes it
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, first, 0o644); err != nil {
		t.Fatal(err)
	}
	// With a CRL file too: Mosquitto then refuses any certificate of a root
	// without a list, so fleetd must add the new root's before the root.
	f.Config.BrokerCRLFile = filepath.Join(t.TempDir(), "crl.pem")
	f.Restart(t) // the embedded broker; fleetd writes the CRL file before Mosquitto starts
	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}
	withFiles := func(o *mosquitto.ConfigOptions) { o.CAFile, o.CRLFile = caFile, f.Config.BrokerCRLFile }
	addr := fleettest.FreeAddr(t)
	mq := startMosquittoWith(t, f, addr, "", withFiles)
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Config.BrokerCAFile, f.Config.BrokerReload = caFile, fmt.Sprintf("kill %d", mq.cmd.Process.Pid)
	f.Restart(t)
	var topics protocol.Topics
	dir := f.AddDevice(t, "dev-a")
	oldRoot := f.Server.Trust().Chain().Root()
	if roots := caRoots(t, caFile); len(roots) != 1 || !roots[0].Equal(oldRoot) {
		t.Fatalf("CA file at start: %d roots, want the one root", len(roots))
	}

	if _, err := f.Admin.RotateAnchors(ctx, []string{"ca"}); err != nil {
		t.Fatal(err)
	}
	newRoot := f.Server.Trust().Chain().Root()
	if newRoot.Equal(oldRoot) {
		t.Fatal("anchors rotate kept the root")
	}
	if roots := caRoots(t, caFile); len(roots) != 2 || !roots[0].Equal(oldRoot) || !roots[1].Equal(newRoot) {
		t.Fatalf("CA file after anchors rotate: %d roots, want the old and the new one", len(roots))
	}
	select { // the reload command ran before anchors rotate returned
	case err := <-mq.done:
		mq.done <- err // the cleanup reads it again
	case <-time.After(5 * time.Second):
		t.Fatal("the reload command did not stop Mosquitto")
	}
	if lists, err := mosquitto.ReadCRLFile(f.Config.BrokerCRLFile); err != nil || len(lists) != 2 {
		t.Fatalf("CRL file after anchors rotate: %d lists, %v; want one per root", len(lists), err)
	}
	startMosquittoWith(t, f, addr, "", withFiles)
	runAgents(t, []string{dir}, nil)
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"dev-a"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "dev-a at v2 through Mosquitto", func() bool { return activeVersions(t, f.Admin)["dev-a"] == 2 })
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cred, _, err := ks.TLSCredential(2)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cred.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	onlyOld := x509.NewCertPool()
	onlyOld.AddCert(oldRoot)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: onlyOld, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatal("dev-a's v2 certificate chains to the old root: the test proves nothing")
	}
	if err := leaf.CheckSignatureFrom(newRoot); err != nil {
		t.Fatalf("dev-a's v2 certificate is not the new root's: %v", err)
	}
	if _, err := mqttAs(t, addr, dir, "dev-a-v2", 2, []string{topics.Down("dev-a")}, nil); err != nil {
		t.Errorf("dev-a with its certificate of the new root: %v", err)
	}
	if _, err := mqttAs(t, addr, dir, "dev-a-v1", 1, []string{topics.Down("dev-a")}, nil); err != nil {
		t.Errorf("dev-a with its certificate of the old root, still within its grace: %v", err)
	}
}

// caRoots reads the certificates of a PEM CA file.
func caRoots(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// A retired version is refused by Mosquitto in the TLS handshake: fleetd
// keeps --broker-crl-file listing it (the plugin cannot tell it from the
// current version: both have the device's name) and has Mosquitto re-read
// it (here kill -HUP, as systemctl reload mosquitto does), while the
// current version connects. The file is written by a first start with the
// embedded broker, so that it exists when Mosquitto starts. The time from
// the retirement to the first refusal is measured. A device restored from
// a backup that holds only the retired version then re-enrols through the
// birth listener with its agent.
func TestMosquittoRefusesRetiredVersions(t *testing.T) {
	ctx := context.Background()
	clk := &clock{}
	retired := make(chan time.Time, 1)
	f := fleettest.InitFleet(t, func(c *server.Config) {
		c.Grace, c.Now = time.Minute, clk.Now
		c.OnStateChange = func(ch lifecycle.Change) {
			if ch.Device == "dev-a" && ch.Slot == lifecycle.SlotIdentity && ch.Version == 1 && ch.To == lifecycle.StateRetired {
				retired <- time.Now()
			}
		}
	})
	f.Config.BrokerCRLFile = filepath.Join(t.TempDir(), "crl.pem")
	f.Restart(t) // the embedded broker; fleetd writes the CRL file
	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}
	if lists, err := mosquitto.ReadCRLFile(f.Config.BrokerCRLFile); err != nil || len(lists) != 1 || len(lists[0].RevokedCertificateEntries) != 0 {
		t.Fatalf("CRL file before Mosquitto starts: %d lists, %v; want one empty list", len(lists), err)
	}
	addr, birthAddr := fleettest.FreeAddr(t), fleettest.FreeAddr(t)
	mq := startMosquittoWith(t, f, addr, "", func(o *mosquitto.ConfigOptions) {
		o.CRLFile, o.BirthListen, o.BirthCAFile = f.Config.BrokerCRLFile, birthAddr, datadir.Paths{Dir: f.Config.DataDir}.BirthCA()
	})
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Config.BrokerCRLReload = fmt.Sprintf("kill -HUP %d", mq.cmd.Process.Pid)
	f.Restart(t)
	var topics protocol.Topics
	dir := f.AddDevice(t, "dev-a")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	v1, _, err := ks.TLSCredential(1) // kept: the agent deletes it once v2 is active
	if err != nil {
		t.Fatal(err)
	}
	asV1 := func() error {
		c, err := mqttc.Dial(ctx, mqttc.Options{Broker: addr, ClientID: "dev-a-v1", Timeout: 5 * time.Second,
			TLS:           &tls.Config{Certificates: []tls.Certificate{v1}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
			Subscriptions: []string{topics.Down("dev-a")}})
		if c != nil {
			c.Close()
		}
		return err
	}
	restored := filepath.Join(t.TempDir(), "dev-a") // the keystore as a backup holds it: v1 only
	if err := os.CopyFS(restored, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	stopAgent := runAgentsStoppable(t, []string{dir})
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"dev-a"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "dev-a at v2 through Mosquitto", func() bool { return activeVersions(t, f.Admin)["dev-a"] == 2 })
	if err := asV1(); err != nil {
		t.Fatalf("dev-a's v1 within its grace: %v", err)
	}

	// TLS 1.2, so that the server's verdict on the client certificate is
	// part of the handshake (TLS 1.3 sends it after).
	handshakeV1 := func() error {
		c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{v1}, RootCAs: ks.Roots(),
			ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12})
		if c != nil {
			c.Close()
		}
		return err
	}
	if err := handshakeV1(); err != nil {
		t.Fatalf("dev-a's v1 handshake within its grace: %v", err)
	}
	clk.Advance(2 * time.Minute) // v1's grace ends
	var at time.Time
	select {
	case at = <-retired:
	case <-time.After(10 * time.Second):
		t.Fatal("v1 not retired 10 s after its grace ended")
	}
	var lastErr error
	eventually(t, 10*time.Second, "dev-a's v1 refused by Mosquitto", func() bool {
		lastErr = handshakeV1()
		return lastErr != nil
	})
	t.Logf("retired version refused by Mosquitto %v after its retirement (debounce %v, signing, SIGHUP)", time.Since(at).Round(time.Millisecond), 200*time.Millisecond)
	if !strings.Contains(lastErr.Error(), "revoked certificate") {
		t.Errorf("dev-a's v1: %v; want it refused in the TLS handshake as revoked", lastErr)
	}
	if err := asV1(); err == nil {
		t.Error("dev-a's retired v1 connected over MQTT")
	}
	if _, err := mqttAs(t, addr, dir, "dev-a-v2", 2, []string{topics.Down("dev-a")}, nil); err != nil {
		t.Errorf("dev-a's current v2 after v1's retirement: %v", err)
	}
	lists, err := mosquitto.ReadCRLFile(f.Config.BrokerCRLFile)
	if err != nil || len(lists) != 1 || len(lists[0].RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL file after the retirement: %d lists, %v; want one with one entry", len(lists), err)
	}
	// The device restored from the backup holds only v1, which Mosquitto
	// refuses: its agent re-enrols with the birth credential through the
	// birth listener and connects with the identity that brings.
	stopAgent()
	runAgents(t, []string{restored}, func(o *device.Options) { o.ReenrollBroker, o.ReenrollAfter = birthAddr, 100*time.Millisecond })
	eventually(t, 30*time.Second, "dev-a re-enrolled through Mosquitto's birth listener, at v3", func() bool { return activeVersions(t, f.Admin)["dev-a"] == 3 })
}

// A birth credential re-enrols through Mosquitto's birth listener, which
// trusts only the birth CA and names the client "CN=ID": fleetd's plugin
// role for that name reaches the device's re-enrolment topics and nothing
// else, and the identity re-enrolment brings connects on the device
// listener. The birth credential is refused on the device listener.
func TestMosquittoBirthCredentialReenrols(t *testing.T) {
	ctx := context.Background()
	f := fleettest.InitFleet(t, nil)
	p := datadir.Paths{Dir: f.Config.DataDir}
	addr, birthAddr := fleettest.FreeAddr(t), fleettest.FreeAddr(t)
	startMosquittoWith(t, f, addr, "", func(o *mosquitto.ConfigOptions) { o.BirthListen, o.BirthCAFile = birthAddr, p.BirthCA() })
	f.Config.ExternalBroker = mosquitto.Scheme + addr
	f.Restart(t)
	var topics protocol.Topics
	dir := f.AddDevice(t, "dev-a")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	bkey, bcert, err := ks.BirthCredential()
	if err != nil {
		t.Fatal(err)
	}
	birth := tls.Certificate{Certificate: [][]byte{bcert.Raw}, PrivateKey: bkey, Leaf: bcert}
	dial := func(at, id string, cred tls.Certificate, subs []string, onMsg func(string, []byte)) (*mqttc.Conn, error) {
		c, err := mqttc.Dial(ctx, mqttc.Options{Broker: at, ClientID: id, Timeout: 5 * time.Second,
			TLS:           &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: ks.Roots(), ServerName: "127.0.0.1"},
			Subscriptions: subs, OnMessage: onMsg})
		if c != nil {
			t.Cleanup(c.Close)
		}
		return c, err
	}

	// What the birth credential may not do.
	if _, err := dial(addr, "dev-a-birth", birth, []string{topics.ReenrollDown("dev-a")}, nil); err == nil {
		t.Error("the birth credential connected on the device listener")
	}
	for _, topic := range []string{topics.Down("dev-a"), topics.Broadcast(), topics.ReenrollDown("dev-b")} {
		if _, err := dial(birthAddr, "dev-a-probe", birth, []string{topic}, nil); !errors.Is(err, mqttc.ErrDenied) {
			t.Errorf("birth credential subscribing to %s: %v, want %v", topic, err, mqttc.ErrDenied)
		}
	}
	srvCert, err := tls.LoadX509KeyPair(p.ServerCert(), p.ServerKey())
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 16)
	if _, err := dial(addr, "fleetd-observer", srvCert, []string{topics.Up("dev-a"), topics.Down("dev-a")},
		func(topic string, _ []byte) { seen <- topic }); err != nil {
		t.Fatalf("observer with fleetd's certificate: %v", err)
	}

	// Re-enrolment, as the agent does it, through the birth listener.
	answers := make(chan []byte, 8)
	bc, err := dial(birthAddr, "dev-a", birth, []string{topics.ReenrollDown("dev-a")}, func(_ string, b []byte) { answers <- b })
	if err != nil {
		t.Fatalf("birth credential on the birth listener: %v", err)
	}
	for _, topic := range []string{topics.Up("dev-a"), topics.Down("dev-a")} {
		if err := bc.Publish(ctx, topic, []byte("from-birth")); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	select {
	case topic := <-seen:
		t.Errorf("the birth credential wrote %s", topic)
	case <-time.After(300 * time.Millisecond):
	}
	key, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := device.CSR("dev-a", key)
	if err != nil {
		t.Fatal(err)
	}
	codec := protocol.NewCodec()
	m := protocol.Stamp(&protocol.Reenroll{CSR: csr, Anchors: 1}, time.Now(), 0)
	m.RID = protocol.NewID()
	req, err := codec.Seal(m, bkey, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := bc.Publish(ctx, topics.Reenroll("dev-a"), req); err != nil {
		t.Fatal(err)
	}
	var leaf []byte
	for leaf == nil {
		select {
		case b := <-answers:
			env, err := codec.Open(b)
			if err != nil || env.IsSigned() {
				continue
			}
			if msg, err := codec.Message(env); err == nil {
				if c, ok := msg.(*protocol.Cert); ok {
					if leaf, err = protocol.ExpandLeaf(c.Cert, &key.PublicKey); err != nil {
						t.Fatal(err)
					}
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no certificate in answer to the re-enrolment through the birth listener")
		}
	}
	if _, err := dial(addr, "dev-a", tls.Certificate{Certificate: [][]byte{leaf}, PrivateKey: key}, []string{topics.Down("dev-a")}, nil); err != nil {
		t.Errorf("dev-a with its re-enrolled identity on the device listener: %v", err)
	}
}
