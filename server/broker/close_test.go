package broker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/server/broker"
)

// acceptAll is a credential checker that accepts every device.
type acceptAll struct{}

func (acceptAll) CheckCredential(context.Context, identity.Identity, *x509.Certificate) error {
	return nil
}

// TestCloseWhileClientsReconnect: Close returns at once, without error,
// while devices keep reconnecting as fast as they can (some of them
// accepted in the instant the listener closes, still in their handshake
// or CONNECT), and while other connections sit open having sent nothing.
// Every client connection ends.
func TestCloseWhileClientsReconnect(t *testing.T) {
	b, ca, root := startBroker(t, false)
	addr := b.Addr()

	// Connections that never speak: one bare TCP, one after its TLS
	// handshake.
	var idle []net.Conn
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	idle = append(idle, raw)
	// A device whose CONNECT has not gone out yet.
	quiet := dialDevice(t, ca, root, addr, "dev-quiet")
	if err := quiet.Handshake(); err != nil {
		t.Fatal(err)
	}
	idle = append(idle, quiet)

	const reconnecting = 16
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var mu sync.Mutex
	sessions := 0
	for i := range reconnecting {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("dev-%02d", i)
			cfg := deviceTLS(t, ca, root, id)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, cfg)
				if err != nil {
					continue // the listener is closed: keep trying until told
				}
				if connectMQTT(c, id) {
					mu.Lock()
					sessions++
					mu.Unlock()
				}
				_, _ = io.Copy(io.Discard, c) // until the broker drops us
				c.Close()
			}
		}()
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	eventually("sessions", func() bool { mu.Lock(); defer mu.Unlock(); return sessions >= reconnecting })

	start := time.Now()
	err = b.Close()
	took := time.Since(start)
	close(stop)
	if err != nil {
		t.Fatalf("close: %v", err)
	}
	if took > 3*time.Second {
		t.Errorf("close took %v, want well under the 5 s give-up", took)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reconnecting clients still connected after Close")
	}
	for _, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("idle connection %v not closed by Close: %v", c.LocalAddr(), err)
		}
		c.Close()
	}
}

// startBroker starts an embedded broker on loopback with a CA of its own
// for the clients, which it returns with its root.
func startBroker(t *testing.T, awaitServer bool) (*broker.Embedded, *certs.CA, *x509.Certificate) {
	t.Helper()
	now := time.Now()
	rk := key(t)
	root, err := certs.NewRoot(rk, "fleet", now.Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(root, rk, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srvKey := key(t)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1),
		Subject: pkix.Name{CommonName: "broker"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, root, &srvKey.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.Start(broker.Options{Addr: "127.0.0.1:0", Checker: acceptAll{}, AwaitServer: awaitServer,
		Trust: broker.StaticTrust{Identity: pool(root), Birth: x509.NewCertPool()},
		TLS:   &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER, root.Raw}, PrivateKey: srvKey}}}})
	if err != nil {
		t.Fatal(err)
	}
	return b, ca, root
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// deviceTLS is a device's client TLS configuration: a fresh key with a
// certificate for id from ca, trusting root.
func deviceTLS(t *testing.T, ca *certs.CA, root *x509.Certificate, id string) *tls.Config {
	return clientTLS(t, ca, root, identity.RoleDevice, id)
}

// clientTLS is a client TLS configuration for the identity role/id.
func clientTLS(t *testing.T, ca *certs.CA, root *x509.Certificate, role identity.Role, id string) *tls.Config {
	k := key(t)
	crt, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: role, Name: id}, PublicKey: k.Public()})
	if err != nil {
		t.Error(err)
		return nil
	}
	return &tls.Config{RootCAs: pool(root), ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{{Certificate: [][]byte{crt.Raw}, PrivateKey: k, Leaf: crt}}}
}

func dialDevice(t *testing.T, ca *certs.CA, root *x509.Certificate, addr, id string) *tls.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Client(c, deviceTLS(t, ca, root, id))
}

// connectMQTT sends an MQTT 3.1.1 CONNECT for id and reports whether the
// broker accepted it.
func connectMQTT(c net.Conn, id string) bool {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 300, ClientIdentifier: id}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return false
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		return false
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return false
	}
	return ack[0] == 0x20 && ack[3] == 0
}
