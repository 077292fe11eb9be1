package mqttc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/internal/mqttc"
)

// recorder is a mochi hook that refuses the client id "refused", denies
// reading any filter under "denied/", and records what clients send: the
// facts a third-party broker sees of keyfleet's clients.
type recorder struct {
	mqtt.HookBase
	mu       sync.Mutex
	connects []packets.Packet
	subs     []packets.Subscription
	pubs     []packets.Packet
}

func (r *recorder) ID() string { return "recorder" }

func (r *recorder) Provides(b byte) bool {
	return slices.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe, mqtt.OnPublish}, b)
}

func (r *recorder) OnConnect(_ *mqtt.Client, pk packets.Packet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.connects = append(r.connects, pk)
	return nil
}

func (r *recorder) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return cl.ID != "refused"
}

func (r *recorder) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	return write || !strings.HasPrefix(topic, "denied/")
}

func (r *recorder) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs = append(r.subs, pk.Filters...)
	return pk
}

func (r *recorder) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.ID != mqtt.InlineClientId {
		r.mu.Lock()
		r.pubs = append(r.pubs, pk)
		r.mu.Unlock()
	}
	return pk, nil
}

// startBroker runs a real mochi broker on a loopback TLS port and returns
// its address, the pool that trusts its certificate, and the recorder.
func startBroker(t *testing.T) (*mqtt.Server, string, *x509.CertPool, *recorder) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)

	caps := mqtt.NewDefaultServerCapabilities()
	caps.Compatibilities.ObscureNotAuthorized = true // as fleetd's broker: 0x80 for a denied filter
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	rec := &recorder{}
	if err := srv.AddHook(rec, nil); err != nil {
		t.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "tls", Address: "127.0.0.1:0",
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}})
	if err := srv.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, ln.Address(), pool, rec
}

// TestDialSession pins what a broker sees of a keyfleet client, which the
// protocol documentation promises to third-party brokers: MQTT 3.1.1
// (protocol level 4), a clean session, the keep-alive asked for (60 s by
// default), QoS 1 subscriptions and publishes without retain unless asked.
func TestDialSession(t *testing.T) {
	srv, addr, pool, rec := startBroker(t)
	ctx := context.Background()
	got := make(chan string, 4)
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker: addr, ClientID: "dev-1", TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
		Subscriptions: []string{"kf/d/dev-1/down"},
		Optional:      []string{"denied/b", "kf/b/live"},
		OnMessage:     func(topic string, payload []byte) { got <- topic + " " + string(payload) },
		Timeout:       5 * time.Second,
	})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()

	if d := conn.Denied(); !slices.Equal(d, []string{"denied/b"}) {
		t.Errorf("Denied: got %q, want [denied/b]", d)
	}
	if err := conn.Publish(ctx, "kf/d/dev-1/up", []byte("hello")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := conn.PublishRetained(ctx, "kf/b/anchors", []byte("set")); err != nil {
		t.Fatalf("PublishRetained: %v", err)
	}
	if err := srv.Publish("kf/d/dev-1/down", []byte("cert"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "kf/d/dev-1/down cert" {
			t.Errorf("OnMessage: got %q, want %q", m, "kf/d/dev-1/down cert")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnMessage: nothing delivered in 5 s")
	}
	if up, down := conn.Bytes(); up != 8 || down != 4 {
		t.Errorf("Bytes: got up %d, down %d, want 8, 4", up, down)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.connects) != 1 {
		t.Fatalf("connects: got %d, want 1", len(rec.connects))
	}
	c := rec.connects[0]
	if c.ProtocolVersion != 4 || c.Connect.ProtocolName == nil || string(c.Connect.ProtocolName) != "MQTT" {
		t.Errorf("protocol: got %q level %d, want MQTT level 4 (3.1.1)", c.Connect.ProtocolName, c.ProtocolVersion)
	}
	if !c.Connect.Clean || c.Connect.Keepalive != 60 || string(c.Connect.ClientIdentifier) != "dev-1" {
		t.Errorf("connect: got clean %v, keep-alive %d, client id %q, want true, 60, dev-1", c.Connect.Clean, c.Connect.Keepalive, c.Connect.ClientIdentifier)
	}
	if c.Connect.UsernameFlag || c.Connect.PasswordFlag || c.Connect.WillFlag {
		t.Errorf("connect: got username %v, password %v, will %v, want none (identity is the TLS client certificate)",
			c.Connect.UsernameFlag, c.Connect.PasswordFlag, c.Connect.WillFlag)
	}
	var filters []string
	for _, s := range rec.subs {
		filters = append(filters, s.Filter)
		if s.Qos != 1 {
			t.Errorf("subscribe %s: got QoS %d, want 1", s.Filter, s.Qos)
		}
	}
	if want := []string{"kf/d/dev-1/down", "denied/b", "kf/b/live"}; !slices.Equal(filters, want) {
		t.Errorf("subscriptions: got %q, want %q in order", filters, want)
	}
	if len(rec.pubs) != 2 {
		t.Fatalf("publishes: got %d, want 2", len(rec.pubs))
	}
	for i, want := range []struct {
		topic  string
		retain bool
	}{{"kf/d/dev-1/up", false}, {"kf/b/anchors", true}} {
		p := rec.pubs[i]
		if p.TopicName != want.topic || p.FixedHeader.Qos != 1 || p.FixedHeader.Retain != want.retain {
			t.Errorf("publish %d: got %s QoS %d retain %v, want %s QoS 1 retain %v", i, p.TopicName, p.FixedHeader.Qos, p.FixedHeader.Retain, want.topic, want.retain)
		}
	}
}

// TestDialRefusals: a refused CONNECT is ErrRefused, which the agent reads
// as "try the other credential"; a denied required subscription is
// ErrDenied and leaves no connection behind.
func TestDialRefusals(t *testing.T) {
	_, addr, pool, _ := startBroker(t)
	for _, tc := range []struct {
		name     string
		clientID string
		subs     []string
		want     error
	}{
		{"refused at connect", "refused", []string{"kf/d/refused/down"}, mqttc.ErrRefused},
		{"required subscription denied", "dev-2", []string{"kf/d/dev-2/down", "denied/a"}, mqttc.ErrDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := mqttc.Dial(context.Background(), mqttc.Options{
				Broker: addr, ClientID: tc.clientID, Subscriptions: tc.subs, Timeout: 5 * time.Second,
				TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
			})
			if !errors.Is(err, tc.want) {
				if conn != nil {
					conn.Close()
				}
				t.Fatalf("Dial: got %v, want %v", err, tc.want)
			}
		})
	}
}

// A broker that ends the TLS handshake with an alert refused the client's
// certificate (Mosquitto with a crlfile refuses a retired one so): that is
// ErrRefused too, so the agent tries its other credentials. A connection
// that just closes is not.
func TestDialCertificateRefused(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	for _, tc := range []struct {
		name    string
		serve   func(net.Conn)
		refused bool
	}{
		{"alert in the handshake", func(c net.Conn) {
			// TLS 1.2: the verdict on the client certificate is part of the handshake.
			s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: x509.NewCertPool(), MaxVersion: tls.VersionTLS12})
			_ = s.Handshake()
			s.Close()
		}, true},
		{"closed without a word", func(c net.Conn) { c.Close() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					tc.serve(c)
				}
			}()
			conn, err := mqttc.Dial(context.Background(), mqttc.Options{Broker: l.Addr().String(), ClientID: "dev-1", Timeout: 5 * time.Second,
				TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
			if conn != nil {
				conn.Close()
			}
			if err == nil || errors.Is(err, mqttc.ErrRefused) != tc.refused {
				t.Errorf("Dial: %v; want refused %v", err, tc.refused)
			}
		})
	}
}
