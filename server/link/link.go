package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
)

// ErrNotConnected: the session is down; the message was not sent.
var ErrNotConnected = errors.New("link: not connected to the broker")

// Options configures a Link.
type Options struct {
	// Broker is host:port; TLS is always used. Required.
	Broker string
	// Certificate gives fleetd's client certificate and Roots the roots
	// the broker's certificate must chain to. Both are read per
	// connection, so a re-issued certificate or a rotated root is used by
	// the next one. Required.
	Certificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	Roots       func() *x509.CertPool
	// Now is the clock certificates are checked with; nil means time.Now.
	Now func() time.Time
	// Subscriptions are made before a connect counts as done.
	Subscriptions []string
	// OnMessage receives every message on the client's reading goroutine;
	// it must not block.
	OnMessage func(topic string, payload []byte)
	// OnConnect, if set, runs after each successful connect, with the
	// session already usable through Publish.
	OnConnect func(ctx context.Context)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// NoRetain sends PublishRetained's messages without the retain flag,
	// for a broker that refuses retained publishes from every client
	// (Mosquitto's retain_available false): the broadcasts still reach the
	// devices connected then, and the engine sends a device that is behind
	// what it missed.
	NoRetain bool
}

// Link is fleetd's MQTT session, reconnected as needed. The zero Link is
// usable as a publisher before Start: it fails with ErrNotConnected.
type Link struct {
	opts Options
	id   string

	mu   sync.Mutex
	conn *mqttc.Conn
	lost chan struct{} // closed when conn drops

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start connects and subscribes, then keeps the session up in the
// background until ctx ends or Close is called. Call it once.
func (l *Link) Start(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.opts, l.id = opts, fmt.Sprintf("fleetd-%x", protocol.NewID()[:4])
	lost, err := l.connect(ctx)
	if err != nil {
		l.cancel()
		return err
	}
	l.wg.Add(1)
	go func() { defer l.wg.Done(); l.keep(ctx, lost) }()
	return nil
}

func (l *Link) connect(ctx context.Context) (chan struct{}, error) {
	lost := make(chan struct{})
	var once sync.Once
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker: l.opts.Broker, ClientID: l.id, TLS: l.tlsConfig(),
		Subscriptions: l.opts.Subscriptions, OnMessage: l.opts.OnMessage,
		OnLost: func(err error) {
			l.opts.Logger.Warn("fleetd lost its broker connection; reconnecting", "err", err)
			once.Do(func() { close(lost) })
		},
	})
	if err != nil {
		return nil, fmt.Errorf("link: connect to broker %s: %w", l.opts.Broker, err)
	}
	l.mu.Lock()
	if ctx.Err() != nil { // Close ran meanwhile: do not leave this one open
		l.mu.Unlock()
		conn.Close()
		return nil, ctx.Err()
	}
	l.conn, l.lost = conn, lost
	l.mu.Unlock()
	if l.opts.OnConnect != nil {
		l.opts.OnConnect(ctx)
	}
	return lost, nil
}

// tlsConfig names the broker as it is dialled; a wildcard listen address
// is reached as localhost.
func (l *Link) tlsConfig() *tls.Config {
	host, _, _ := net.SplitHostPort(l.opts.Broker)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return &tls.Config{GetClientCertificate: l.opts.Certificate, RootCAs: l.opts.Roots(), ServerName: host,
		MinVersion: tls.VersionTLS12, Time: l.opts.Now}
}

// keep waits for the session to drop and reconnects, backing off from
// 100 ms to 10 s while the broker is unreachable.
func (l *Link) keep(ctx context.Context, lost chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
		}
		l.mu.Lock()
		if l.lost == lost {
			l.conn = nil
		}
		l.mu.Unlock()
		for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 10*time.Second) {
			var err error
			if lost, err = l.connect(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			l.opts.Logger.Warn("broker reconnect failed", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

func (l *Link) current() *mqttc.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn
}

// Publish sends a message at QoS 1.
func (l *Link) Publish(ctx context.Context, topic string, payload []byte) error {
	c := l.current()
	if c == nil {
		return ErrNotConnected
	}
	return c.Publish(ctx, topic, payload)
}

// PublishRetained sends a message the broker keeps for later subscribers.
func (l *Link) PublishRetained(ctx context.Context, topic string, payload []byte) error {
	c := l.current()
	if c == nil {
		return ErrNotConnected
	}
	if l.opts.NoRetain {
		return c.Publish(ctx, topic, payload)
	}
	return c.PublishRetained(ctx, topic, payload)
}

// Connected reports whether the session is up now: fleetd's readiness
// check asks it.
func (l *Link) Connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return false
	}
	select {
	case <-l.lost:
		return false
	default:
		return true
	}
}

// Close ends the session and stops reconnecting.
func (l *Link) Close() {
	if l.cancel != nil {
		l.cancel()
	}
	l.mu.Lock()
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
	l.mu.Unlock()
	l.wg.Wait()
}
