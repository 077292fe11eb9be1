package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
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
	// TLS returns the client configuration for each dial: read again every
	// time, so that a rotated root or a re-issued certificate is used by
	// the next connection. Required.
	TLS func() *tls.Config
	// Subscriptions are made before a connect counts as done.
	Subscriptions []string
	// OnMessage receives every message on the client's reading goroutine;
	// it must not block.
	OnMessage func(topic string, payload []byte)
	// OnConnect, if set, runs after each successful connect, with the
	// session already usable through Publish.
	OnConnect func(ctx context.Context, l *Link)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Link is fleetd's MQTT session, reconnected as needed.
type Link struct {
	opts Options
	id   string

	mu   sync.Mutex
	conn *mqttc.Conn
	lost chan struct{} // closed when conn drops

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Dial connects and subscribes, then keeps the session up in the
// background until ctx ends or Close is called.
func Dial(ctx context.Context, opts Options) (*Link, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &Link{opts: opts, id: fmt.Sprintf("fleetd-%x", protocol.NewID()[:4]), cancel: cancel}
	lost, err := l.connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	l.wg.Add(1)
	go func() { defer l.wg.Done(); l.keep(ctx, lost) }()
	return l, nil
}

func (l *Link) connect(ctx context.Context) (chan struct{}, error) {
	lost := make(chan struct{})
	var once sync.Once
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker: l.opts.Broker, ClientID: l.id, TLS: l.opts.TLS(),
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
		l.opts.OnConnect(ctx, l)
	}
	return lost, nil
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
	return c.PublishRetained(ctx, topic, payload)
}

// Close ends the session and stops reconnecting.
func (l *Link) Close() {
	l.cancel()
	l.mu.Lock()
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
	l.mu.Unlock()
	l.wg.Wait()
}
