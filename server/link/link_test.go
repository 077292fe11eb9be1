package link_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/server/link"
)

// credentials makes a CA, a server certificate for localhost and a
// client certificate under it.
func credentials(t *testing.T) (server, client tls.Certificate, roots *x509.CertPool) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	root, err := certs.NewRoot(caKey, "link test CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, caKey, certs.CAOptions{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(role identity.Role, name string) tls.Certificate {
		k := key()
		c, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: role, Name: name},
			PublicKey: k.Public(), DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	}
	roots = x509.NewCertPool()
	roots.AddCert(root)
	return issue(identity.RoleServer, "broker"), issue(identity.RoleServer, "fleetd"), roots
}

// startBroker runs a mochi broker that lets every client in, on a TLS
// listener on a free loopback port.
func startBroker(t *testing.T, cert tls.Certificate) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ln := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "tls", Address: addr,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	if err := srv.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, addr
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestReconnect: a Link publishes nothing before it connects, delivers
// what the broker sends on its subscriptions, reconnects on its own when
// the broker drops it (running OnConnect again and resubscribing), and
// publishes nothing after Close.
func TestReconnect(t *testing.T) {
	srvCert, cliCert, roots := credentials(t)
	broker, addr := startBroker(t, srvCert)
	var l link.Link
	ctx := context.Background()
	if err := l.Publish(ctx, "kf/x", []byte("early")); !errors.Is(err, link.ErrNotConnected) {
		t.Fatalf("publish before Start: got %v, want ErrNotConnected", err)
	}
	var mu sync.Mutex
	connects, got := 0, []string{}
	err := l.Start(ctx, link.Options{Broker: addr,
		Certificate:   func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cliCert, nil },
		Roots:         func() *x509.CertPool { return roots },
		Subscriptions: []string{"kf/up"},
		OnMessage: func(_ string, payload []byte) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, string(payload))
		},
		OnConnect: func(context.Context) {
			mu.Lock()
			defer mu.Unlock()
			connects++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := func(want string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, g := range got {
				if g == want {
					return true
				}
			}
			return false
		}
	}
	if err := broker.Publish("kf/up", []byte("one"), false, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first message", received("one"))
	if err := l.Publish(ctx, "kf/down", []byte("hi")); err != nil {
		t.Fatalf("publish while connected: %v", err)
	}

	for id, cl := range broker.Clients.GetAll() {
		if id != mqtt.InlineClientId {
			_ = broker.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	eventually(t, "a second connect", func() bool { mu.Lock(); defer mu.Unlock(); return connects == 2 })
	eventually(t, "a message after the reconnect", func() bool {
		_ = broker.Publish("kf/up", []byte("two"), false, 1)
		return received("two")()
	})
	if err := l.Publish(ctx, "kf/down", []byte("again")); err != nil {
		t.Fatalf("publish after the reconnect: %v", err)
	}

	l.Close()
	if err := l.Publish(ctx, "kf/down", []byte("late")); !errors.Is(err, link.ErrNotConnected) {
		t.Errorf("publish after Close: got %v, want ErrNotConnected", err)
	}
}
