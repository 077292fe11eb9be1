package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/store"
)

// rogue is a test client holding a device's real credential and speaking
// the protocol by hand, to send what an honest agent never would.
type rogue struct {
	t     *testing.T
	id    string
	ks    *device.Keystore
	conn  *mqttc.Conn
	codec *protocol.Codec
	down  chan []byte
	topic protocol.Topics
}

func newRogue(t *testing.T, f *fleettest.Fleet, dir string, v uint32) *rogue {
	t.Helper()
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &rogue{t: t, id: ks.ID().ID, ks: ks, codec: protocol.NewCodec(), down: make(chan []byte, 16)}
	r.conn = r.dial(f, v, []string{r.topic.Down(r.id)})
	t.Cleanup(r.conn.Close)
	return r
}

func (r *rogue) dial(f *fleettest.Fleet, v uint32, subs []string) *mqttc.Conn {
	r.t.Helper()
	cred, _, err := r.ks.TLSCredential(v)
	if err != nil {
		r.t.Fatal(err)
	}
	c, err := mqttc.Dial(context.Background(), mqttc.Options{
		Broker: f.MQTTAddr(), ClientID: r.id, Subscriptions: subs, Timeout: 5 * time.Second,
		TLS:       &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: r.ks.Roots(), ServerName: "127.0.0.1"},
		OnMessage: func(_ string, p []byte) { r.down <- append([]byte(nil), p...) },
	})
	if err != nil {
		r.t.Fatalf("rogue %s dial v%d: %v", r.id, v, err)
	}
	return c
}

func (r *rogue) publish(b []byte) {
	r.t.Helper()
	if err := r.conn.Publish(context.Background(), r.topic.Up(r.id), b); err != nil {
		r.t.Fatalf("publish: %v", err)
	}
}

func (r *rogue) key(v uint32) *ecdsa.PrivateKey {
	r.t.Helper()
	k, err := r.ks.Key(v)
	if err != nil {
		r.t.Fatal(err)
	}
	return k
}

func (r *rogue) seal(m protocol.Message, key *ecdsa.PrivateKey) []byte {
	r.t.Helper()
	b, err := r.codec.Seal(protocol.Stamp(m, time.Now(), 0), key, r.id)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// waitCert waits for the certificate of version v on the down topic.
func (r *rogue) waitCert(v uint32) *protocol.Cert {
	r.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case b := <-r.down:
			env, err := r.codec.Open(b)
			if err != nil {
				continue
			}
			m, err := r.codec.Message(env)
			if c, ok := m.(*protocol.Cert); err == nil && ok && c.Version == v {
				return c
			}
		case <-timeout:
			r.t.Fatalf("no certificate for v%d", v)
		}
	}
}

// waitError waits for an error message on the down topic.
func (r *rogue) waitError() *protocol.Error {
	r.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case b := <-r.down:
			env, err := r.codec.Open(b)
			if err != nil {
				continue
			}
			m, err := r.codec.Decode(env.Payload) // the signature is the agent's business
			if e, ok := m.(*protocol.Error); err == nil && ok {
				return e
			}
		case <-timeout:
			r.t.Fatal("no error message")
		}
	}
}

func csrFor(t *testing.T, name string, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
		URIs:    []*urlURL{identity.Identity{Role: identity.RoleDevice, Name: name}.URI()},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// snapshot is what must not change when input is refused.
type snapshot struct {
	dev   *store.Device
	audit uint64
}

func snap(t *testing.T, f *fleettest.Fleet, id string) snapshot {
	t.Helper()
	d, err := f.Store().GetDevice(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.Store().VerifyAudit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{d, n}
}

// refused runs send and checks that fleetd counted one rejection for
// reason and changed nothing.
func refused(t *testing.T, f *fleettest.Fleet, id, reason string, send func()) {
	t.Helper()
	before := snap(t, f, id)
	n0 := f.Engine().Stats().Rejected[reason]
	send()
	eventually(t, 10*time.Second, "rejection "+reason, func() bool { return f.Engine().Stats().Rejected[reason] == n0+1 })
	// Anything else in flight would show up as a change here.
	time.Sleep(50 * time.Millisecond)
	after := snap(t, f, id)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("%s: state changed:\nbefore %+v\nafter  %+v", reason, before.dev, after.dev)
	}
}

func TestHostileInputIsRefusedAndChangesNothing(t *testing.T) {
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Grace = time.Hour })
	ctx := context.Background()
	aliceDir := f.AddDevice(t, "alice")
	malDir := f.AddDevice(t, "mallory")
	runAgents(t, []string{aliceDir}, nil)
	eventually(t, 10*time.Second, "alice connected", func() bool { return f.Broker().Connected() >= 2 })

	// An open rotation for mallory, whose "agent" is this test.
	rot, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"mallory"}})
	if err != nil {
		t.Fatal(err)
	}
	rid := mustHex(t, rot.Rotations[0].RotationID)
	m := newRogue(t, f, malDir, 1)
	v1 := m.key(1)
	k2, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	enroll := func(v uint32, csr []byte) *protocol.Enroll {
		e := &protocol.Enroll{Slot: protocol.SlotIdentity, Version: v, CSR: csr}
		e.RID = rid
		return e
	}
	activated := func(v uint32) *protocol.Activated {
		a := &protocol.Activated{Slot: protocol.SlotIdentity, Version: v}
		a.RID = rid
		return a
	}

	t.Run("malformed CBOR", func(t *testing.T) {
		refused(t, f, "mallory", "malformed", func() { m.publish([]byte{0xa1, 0x01, 0xff, 0x00, 0x13}) })
		// Refused, and told why: the reason's wire code and word.
		if e := m.waitError(); e.Code != protocol.CodeMalformed || e.Detail != "malformed" {
			t.Errorf("answer: got code %d detail %q, want %d malformed", e.Code, e.Detail, protocol.CodeMalformed)
		}
	})
	t.Run("over 4 KiB", func(t *testing.T) {
		big := append([]byte{0xd2, 0x84}, make([]byte, protocol.MaxPacketSize+100)...)
		refused(t, f, "mallory", "too-large", func() { m.publish(big) })
	})
	t.Run("bad COSE signature", func(t *testing.T) {
		b := m.seal(&protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}}, v1)
		b[len(b)-1] ^= 0x55
		refused(t, f, "mallory", "bad-signature", func() { m.publish(b) })
	})
	t.Run("enroll signed by a key that is not the device's", func(t *testing.T) {
		other, _ := device.NewKey()
		refused(t, f, "mallory", "unknown-key", func() { m.publish(m.seal(enroll(2, csrFor(t, "mallory", k2)), other)) })
	})
	t.Run("CSR naming another device", func(t *testing.T) {
		refused(t, f, "mallory", "csr-identity", func() { m.publish(m.seal(enroll(2, csrFor(t, "alice", k2)), v1)) })
	})
	t.Run("activation of a version never issued", func(t *testing.T) {
		refused(t, f, "mallory", "unknown-version", func() { m.publish(m.seal(activated(2), v1)) })
	})

	// A genuine enroll, then the same bytes again.
	good := m.seal(enroll(2, csrFor(t, "mallory", k2)), v1)
	m.publish(good)
	cert := m.waitCert(2)
	t.Run("redelivered enroll gets the same certificate", func(t *testing.T) {
		// A QoS redelivery of an enroll whose version is issued for the same
		// key is answered with the certificate again and changes nothing.
		before := snap(t, f, "mallory")
		stats := f.Engine().Stats()
		m.publish(good)
		if again := m.waitCert(2); !bytes.Equal(again.Cert, cert.Cert) {
			t.Error("the redelivered enroll got another certificate")
		}
		time.Sleep(50 * time.Millisecond)
		if after := snap(t, f, "mallory"); !reflect.DeepEqual(before, after) {
			t.Errorf("state changed:\nbefore %+v\nafter  %+v", before.dev, after.dev)
		}
		if after := f.Engine().Stats(); !reflect.DeepEqual(after.Rejected, stats.Rejected) || after.Issued != stats.Issued {
			t.Errorf("stats: before %+v, after %+v; want nothing issued or rejected", stats, after)
		}
	})
	t.Run("activation of a version never issued, signed by the issued key", func(t *testing.T) {
		refused(t, f, "mallory", "unknown-version", func() { m.publish(m.seal(activated(7), k2)) })
	})
	// A genuine activation, signed by the new key, then the same bytes again.
	act := m.seal(activated(2), k2)
	m.publish(act)
	eventually(t, 10*time.Second, "mallory active at v2", func() bool { return activeVersions(t, f.Admin)["mallory"] == 2 })
	t.Run("replayed activated", func(t *testing.T) {
		refused(t, f, "mallory", "replay", func() { m.publish(act) })
	})
	t.Run("enroll signed by the superseded key", func(t *testing.T) {
		rot3, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"mallory"}})
		if err != nil {
			t.Fatal(err)
		}
		k3, _ := device.NewKey()
		e := &protocol.Enroll{Slot: protocol.SlotIdentity, Version: 3, CSR: csrFor(t, "mallory", k3)}
		e.RID = mustHex(t, rot3.Rotations[0].RotationID)
		refused(t, f, "mallory", "not-current-key", func() { m.publish(m.seal(e, v1)) })
		// Signed by the right key, but asking to certify that same key again.
		e2 := &protocol.Enroll{Slot: protocol.SlotIdentity, Version: 3, CSR: csrFor(t, "mallory", k2)}
		e2.RID = e.RID
		refused(t, f, "mallory", "key-reuse", func() { m.publish(m.seal(e2, k2)) })
	})
	_ = cert

	// The broker's ACL: mallory may not read alice's commands or speak as alice.
	t.Run("subscribe to another device's down", func(t *testing.T) {
		before := f.Broker().Denials.Snapshot()["acl:read"]
		c := m.dial(f, 1, nil)
		defer c.Close()
		if err := c.Subscribe(ctx, m.topic.Down("alice")); !errors.Is(err, mqttc.ErrDenied) {
			t.Errorf("subscribe to alice's down: got %v, want ErrDenied", err)
		}
		if got := f.Broker().Denials.Snapshot()["acl:read"]; got != before+1 {
			t.Errorf("acl:read denials: got %d, want %d", got, before+1)
		}
	})
	t.Run("publish to another device's up", func(t *testing.T) {
		aliceBefore := snap(t, f, "alice")
		stats := f.Engine().Stats()
		before := f.Broker().Denials.Snapshot()["acl:write"]
		c := m.dial(f, 1, nil)
		defer c.Close()
		// Even a message alice really signed, replayed by mallory onto alice's topic.
		hello := m.seal(&protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}}, v1)
		_ = c.Publish(ctx, m.topic.Up("alice"), hello) // the broker drops the connection
		eventually(t, 5*time.Second, "acl:write denial", func() bool { return f.Broker().Denials.Snapshot()["acl:write"] == before+1 })
		time.Sleep(50 * time.Millisecond)
		if !reflect.DeepEqual(aliceBefore, snap(t, f, "alice")) {
			t.Error("alice's state changed")
		}
		if got := f.Engine().Stats(); got.Rejected["bad-signature"] != stats.Rejected["bad-signature"] || got.Resent != stats.Resent {
			t.Errorf("the engine saw the message: before %+v after %+v", stats, got)
		}
	})
}
