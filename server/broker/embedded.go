package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/logx"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
)

// Options configures the embedded broker.
type Options struct {
	// Addr is the TLS listen address, e.g. 127.0.0.1:8883. Required.
	Addr string
	// TLS is the server side: its certificate (Certificates or
	// GetCertificate). Client certificates are required; they are verified
	// against Trust, not against TLS.ClientCAs.
	TLS *tls.Config
	// Trust gives the roots client certificates must chain to. Required.
	Trust Trust
	// Policy decides how long after expiry an identity may still renew,
	// read at each connection (an applied policy takes effect at once); nil
	// means policy.Default().
	Policy policy.Source
	// Now is the clock certificates are checked against; nil: time.Now.
	Now func() time.Time
	// Checker accepts or refuses device credentials. Required.
	Checker CredentialChecker
	// OnRestore, if set, is called (in its own goroutine) with the device
	// id of a session the broker had to restore (see AuthHook.OnDisconnect):
	// messages published to it meanwhile were lost.
	OnRestore func(device string)
	// OnSession, if set, is told (synchronously: it must not block) when a
	// device's newest session is accepted (up) and when it ends, with the
	// time it was accepted: a cluster records which node holds each device.
	OnSession func(device string, since time.Time, up bool)
	// Topics is the topic layout; zero means the default prefix.
	Topics protocol.Topics
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// MaxSessionExpiry bounds how long a disconnected session is kept;
	// 0 means 30 days, for devices that stay away long.
	MaxSessionExpiry time.Duration
	// UplinkRate (messages per second) and UplinkBurst are each device's
	// token bucket for publishes; a device over it is disconnected and
	// counted as "flood". Zero means DefaultUplinkRate and
	// DefaultUplinkBurst; a negative UplinkRate turns the limit off. The
	// bucket runs on the wall clock, not Now: a flood happens in real time
	// even when fleetd's clock is simulated.
	UplinkRate  float64
	UplinkBurst int
	// AwaitServer keeps devices out (their connections dropped without a
	// CONNACK, which they retry) until a server session has subscribed to
	// the uplinks: what a device publishes earlier would be lost. fleetd
	// sets it; tests of the broker alone leave it off.
	AwaitServer bool
}

// Embedded is a running mochi-mqtt broker with keyfleet's hooks.
type Embedded struct {
	srv     *mqtt.Server
	ln      *listeners.Net
	raw     *trackedListener // the TCP listener under ln: closed first at Close
	Denials *Denials
	auth    *AuthHook
	ids     *identities
	closed  atomic.Bool
}

// Start starts the broker and returns once it is listening.
func Start(o Options) (*Embedded, error) {
	if o.Addr == "" || o.TLS == nil || o.Checker == nil || o.Trust == nil {
		return nil, fmt.Errorf("broker: address, TLS config, trust and credential checker are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Policy == nil {
		o.Policy = policy.Default()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxSessionExpiry == 0 {
		o.MaxSessionExpiry = 30 * 24 * time.Hour
	}
	if o.UplinkRate == 0 {
		o.UplinkRate = DefaultUplinkRate
	}
	if o.UplinkBurst == 0 {
		o.UplinkBurst = DefaultUplinkBurst
	}
	var limits *uplinkLimits
	if o.UplinkRate > 0 {
		limits = newUplinkLimits(o.UplinkRate, o.UplinkBurst)
	}
	den := &Denials{}
	logs := logx.NewLimiter(logx.DefaultLogEvery, nil)
	tlsConf := o.TLS.Clone()
	// The handshake requires a certificate and its proof of possession, and
	// that it chains to one of the fleet's CAs (ChainsToFleet, expiry
	// aside); AuthHook then decides what it may do (Classify), on fleetd's
	// clock.
	tlsConf.ClientAuth = tls.RequireAnyClientCert
	tlsConf.ClientCAs = nil
	tlsConf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		err := verifyRaw(raw, o.Trust, o.Now())
		if err != nil {
			den.add("tls:untrusted")
			logs.Log(o.Logger, slog.LevelWarn, "tls:untrusted", "broker: client certificate refused in the TLS handshake", "err", err)
		}
		return err
	}
	if tlsConf.MinVersion < tls.VersionTLS12 {
		tlsConf.MinVersion = tls.VersionTLS12
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = protocol.MaxPacketSize + 256 // payload cap plus topic and header
	caps.MaximumSessionExpiryInterval = uint32(o.MaxSessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = int64(o.MaxSessionExpiry / time.Second)
	caps.Compatibilities.ObscureNotAuthorized = true
	// mochi's default queue of 8,192 pending writes per client is a channel
	// of pointers allocated at connect: 64 KiB for every idle device. A
	// device gets a handful of messages at a time; fleetd's own session,
	// which takes every uplink, drains over loopback. A write that finds the
	// queue full is dropped and counted (broker:dropped); the agent's step
	// timeout recovers it.
	caps.MaximumClientWritesPending = maxWritesPending
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// mochi logs refused packets in full at warn; our hooks already log
		// each refusal once, with its reason.
		Logger: slog.New(minLevel{slog.LevelError, o.Logger.Handler()}).With("component", "mqtt"),
	})
	ids := &identities{}
	var gate *serverGate
	if o.AwaitServer {
		gate = &serverGate{ids: ids, up: o.Topics.SharedUp(ServerShareGroup), log: o.Logger}
		if err := srv.AddHook(gate, nil); err != nil {
			return nil, fmt.Errorf("broker: server gate hook: %w", err)
		}
	}
	auth := &AuthHook{srv: srv, ids: ids, checker: o.Checker, trust: o.Trust, policy: o.Policy, now: o.Now,
		onRestore: o.OnRestore, onSession: o.OnSession, gate: gate, denials: den, log: o.Logger, logs: logs}
	if err := srv.AddHook(auth, nil); err != nil {
		return nil, fmt.Errorf("broker: auth hook: %w", err)
	}
	if err := srv.AddHook(&ACLHook{srv: srv, ids: ids, topics: o.Topics, denials: den, log: o.Logger, logs: logs, limits: limits}, nil); err != nil {
		return nil, fmt.Errorf("broker: acl hook: %w", err)
	}
	if err := srv.AddHook(&dropHook{denials: den, log: o.Logger, logs: logs}, nil); err != nil {
		return nil, fmt.Errorf("broker: drop hook: %w", err)
	}
	// Listen ourselves so that the address is bound (and errors surface)
	// before Start returns.
	nl, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", o.Addr, err)
	}
	l := newTrackedListener(nl)
	// mochi serves the listener we hold, so Close can stop accepting before
	// it drops the sessions (else agents reconnect into a closing broker).
	ln := listeners.NewNet("tls", tls.NewListener(l, tlsConf))
	if err := srv.AddListener(ln); err != nil {
		l.Close()
		return nil, fmt.Errorf("broker: listener %s: %w", o.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	return &Embedded{srv: srv, ln: ln, raw: l, Denials: den, auth: auth, ids: ids}, nil
}

// Addr returns the address the broker listens on.
func (e *Embedded) Addr() string { return e.ln.Address() }

// Serving reports whether the broker still accepts connections: false
// once Close began. fleetd's readiness check asks it.
func (e *Embedded) Serving() bool { return !e.closed.Load() }

// Close stops the broker and disconnects every client; a second Close
// does nothing. It first stops accepting, then stops the sessions mochi
// knows and closes every connection still open at the TCP level: a client
// accepted just before the listener closed may still be in its TLS
// handshake or CONNECT, unknown to mochi's shutdown, which would otherwise
// wait for it (up to the keep-alive of a session it registers after the
// sweep). closeTimeout stays as a last bound, so that nothing mochi does
// keeps fleetd from stopping.
func (e *Embedded) Close() error {
	if e.closed.Swap(true) {
		return nil // closed before: mochi's Close panics the second time
	}
	_ = e.raw.Close() // no new sessions from here on
	e.ids.m.Range(func(k, _ any) bool {
		k.(*mqtt.Client).Stop(packets.ErrServerShuttingDown)
		return true
	})
	e.raw.closeAll()
	done := make(chan error, 1)
	go func() { done <- e.srv.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		return fmt.Errorf("broker: close: connections still open after %v (%d at the TCP level)", closeTimeout, e.raw.open())
	}
}

// maxWritesPending is the per-client outbound queue of the embedded broker.
const maxWritesPending = 1024

// closeTimeout bounds how long Close waits for mochi to finish.
const closeTimeout = 5 * time.Second

// Disconnect drops every live session of the device at once (emergency
// revocation, or a credential that just stopped being accepted).
func (e *Embedded) Disconnect(device string) int {
	n := 0
	e.ids.m.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		if s := v.(session); (s.id.Role == identity.RoleDevice || s.id.Role == identity.RoleIDevID) && s.id.Name == device {
			_ = e.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
			n++
		}
		return true
	})
	return n
}

// DisconnectCredential drops the live sessions of device that logged in
// with the certificate of the given serial (hex): when a version's grace
// ends, a session opened with it before then must not live on.
func (e *Embedded) DisconnectCredential(device, serial string) int {
	n := 0
	e.ids.m.Range(func(k, v any) bool {
		if s := v.(session); s.id.Role == identity.RoleDevice && s.id.Name == device && s.serial == serial {
			_ = e.srv.DisconnectClient(k.(*mqtt.Client), packets.ErrNotAuthorized)
			n++
		}
		return true
	})
	return n
}

// Retained returns how many retained messages the broker holds for topics
// matching filter, for checks that devices left none (they may not retain).
func (e *Embedded) Retained(filter string) int { return len(e.srv.Topics.Messages(filter)) }

// Connected returns how many authenticated clients are connected.
func (e *Embedded) Connected() int {
	n := 0
	e.ids.m.Range(func(_, _ any) bool { n++; return true })
	return n
}

// Present reports whether the device has an authenticated session now
// (a device's client id is its name).
func (e *Embedded) Present(device string) bool {
	_, ok := e.ids.latest.Load(device)
	return ok
}

// ConnectedSince returns when device's newest session was accepted, and
// whether it has one: campaigns time a device's change from its reconnect
// when it came back after the change began.
func (e *Embedded) ConnectedSince(device string) (time.Time, bool) {
	cl, ok := e.ids.latest.Load(device)
	if !ok {
		return time.Time{}, false
	}
	v, ok := e.ids.m.Load(cl)
	if !ok {
		return time.Time{}, false
	}
	return v.(session).at, true
}

// minLevel drops records below min.
type minLevel struct {
	min slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.min, h.Handler.WithAttrs(a)}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.min, h.Handler.WithGroup(n)} }

// dropHook counts messages the broker dropped because a client's queue was
// full, so that the operator sees them without reading mochi's logs.
type dropHook struct {
	mqtt.HookBase
	denials *Denials
	log     *slog.Logger
	logs    *logx.Limiter
}

func (h *dropHook) ID() string { return "keyfleet-drops" }

func (h *dropHook) Provides(b byte) bool { return b == mqtt.OnPublishDropped }

func (h *dropHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.denials.add("broker:dropped")
	h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/broker:dropped", "broker: message dropped, client queue full", "client", cl.ID, "topic", pk.TopicName)
}

// verifyRaw parses the certificates a client presented and checks them
// with ChainsToFleet.
func verifyRaw(raw [][]byte, trust Trust, now time.Time) error {
	chain := make([]*x509.Certificate, 0, len(raw))
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("%w: client certificate: %v", errUntrusted, err)
		}
		chain = append(chain, c)
	}
	return ChainsToFleet(chain, trust, now)
}
