// Package mqttc is the one place keyfleet opens MQTT client connections
// (paho.mqtt.golang): fleetd's engine and the device agent use it alike, so
// the path is the same whether the broker is embedded or external.
//
// It deliberately turns paho's automatic reconnect off: a device must choose
// which credential to reconnect with (its pending certificate after a
// rotation), and fleetd reconnects under its own supervision.
//
// It speaks MQTT 3.1.1 (protocol level 4), the version every broker
// keyfleet supports implements, over TLS only, with a clean session, no
// username, password or will (the TLS client certificate is the identity),
// and QoS 1 for every subscription and publish: keyfleet's messages carry
// their own ids and both ends handle a repeat, so at-least-once suffices
// and QoS 2's extra round trip buys nothing. TestDialSession pins these.
package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Options for Dial.
type Options struct {
	// Broker is the address, host:port; TLS is always used.
	Broker   string
	ClientID string
	TLS      *tls.Config
	// Subscriptions are made, in order, before Dial returns.
	Subscriptions []string
	// Optional subscriptions are made after them; one the broker refuses
	// is skipped (Conn.Denied lists it), not an error: a device renewing
	// an expired identity may read only its own topic.
	Optional []string
	// OnMessage receives every message, in arrival order, on paho's
	// delivery goroutine; it must not block for long.
	OnMessage func(topic string, payload []byte)
	// OnLost is called once when an established connection drops.
	OnLost func(error)
	// Timeout bounds connect, subscribe and publish; 0 means 10 s.
	Timeout time.Duration
	// KeepAlive; 0 means 60 s.
	KeepAlive time.Duration
	// Unordered lets paho deliver messages concurrently (fleetd's engine
	// does its own per-device ordering).
	Unordered bool
}

// ErrRefused: the broker refused the connection (bad credential).
var ErrRefused = errors.New("mqttc: connection refused by broker")

// Conn is a connected client.
type Conn struct {
	denied    []string
	c         paho.Client
	timeout   time.Duration
	bytesUp   atomic.Uint64
	bytesDown atomic.Uint64
}

// Dial connects, subscribes and returns. The context bounds the whole.
func Dial(ctx context.Context, o Options) (*Conn, error) {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 60 * time.Second
	}
	conn := &Conn{timeout: o.Timeout}
	po := paho.NewClientOptions().
		AddBroker("tls://" + o.Broker).
		SetClientID(o.ClientID).
		SetTLSConfig(o.TLS).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(o.Timeout).
		SetWriteTimeout(o.Timeout).
		SetKeepAlive(o.KeepAlive).
		SetOrderMatters(!o.Unordered).
		SetProtocolVersion(4)
	if o.OnLost != nil {
		po.SetConnectionLostHandler(func(_ paho.Client, err error) { o.OnLost(err) })
	}
	if o.OnMessage != nil {
		po.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			conn.bytesDown.Add(uint64(len(m.Payload())))
			o.OnMessage(m.Topic(), m.Payload())
		})
	}
	conn.c = paho.NewClient(po)
	if err := wait(ctx, conn.c.Connect(), o.Timeout); err != nil {
		if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) ||
			errors.Is(err, packets.ErrorRefusedIDRejected) || tlsAlert(err) {
			return nil, fmt.Errorf("%w: %v", ErrRefused, err)
		}
		return nil, fmt.Errorf("mqttc: connect %s as %s: %w", o.Broker, o.ClientID, err)
	}
	subs := append(append([]string(nil), o.Subscriptions...), o.Optional...)
	for i, s := range subs {
		tok := conn.c.Subscribe(s, 1, nil)
		if err := wait(ctx, tok, o.Timeout); err != nil {
			conn.c.Disconnect(0)
			return nil, fmt.Errorf("mqttc: subscribe %s: %w", s, err)
		}
		if st, ok := tok.(*paho.SubscribeToken); ok {
			for f, code := range st.Result() {
				if code != 0x80 {
					continue
				}
				if i >= len(o.Subscriptions) {
					conn.denied = append(conn.denied, f)
					continue
				}
				conn.c.Disconnect(0)
				return nil, fmt.Errorf("mqttc: subscribe %s: %w", f, ErrDenied)
			}
		}
	}
	return conn, nil
}

// Denied lists the optional subscriptions the broker refused.
func (c *Conn) Denied() []string { return c.denied }

// ErrDenied: the broker refused a subscription.
var ErrDenied = errors.New("mqttc: subscription denied")

func wait(ctx context.Context, tok paho.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("mqttc: timed out after %v", timeout)
	}
}

// Publish sends payload with QoS 1 and waits for the broker's ack.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	return c.publish(ctx, topic, payload, false)
}

// PublishRetained sends a retained message with QoS 1.
func (c *Conn) PublishRetained(ctx context.Context, topic string, payload []byte) error {
	return c.publish(ctx, topic, payload, true)
}

func (c *Conn) publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	c.bytesUp.Add(uint64(len(payload)))
	if err := wait(ctx, c.c.Publish(topic, 1, retain, payload), c.timeout); err != nil {
		return fmt.Errorf("mqttc: publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe adds a subscription after Dial; a denied one returns ErrDenied.
func (c *Conn) Subscribe(ctx context.Context, filter string) error {
	tok := c.c.Subscribe(filter, 1, nil)
	if err := wait(ctx, tok, c.timeout); err != nil {
		return fmt.Errorf("mqttc: subscribe %s: %w", filter, err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("mqttc: subscribe %s: %w", f, ErrDenied)
			}
		}
	}
	return nil
}

// Connected reports whether the connection is up.
func (c *Conn) Connected() bool { return c.c.IsConnectionOpen() }

// Close disconnects, letting in-flight work finish for up to 250 ms.
func (c *Conn) Close() { c.c.Disconnect(250) }

// Bytes returns the application payload bytes sent and received.
func (c *Conn) Bytes() (up, down uint64) { return c.bytesUp.Load(), c.bytesDown.Load() }

// tlsAlert reports whether the broker ended the TLS handshake with an
// alert: it refused the client certificate (revoked, expired, of an unknown
// CA), as Mosquitto does with its crlfile, before any MQTT packet.
func tlsAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}
