package device

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/datakey"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
)

// EventKind names what happened in an agent.
type EventKind string

// Event kinds reported to Options.OnEvent.
const (
	EventConnected    EventKind = "connected"    // session up (Version: the credential used)
	EventRefused      EventKind = "refused"      // broker refused a credential (Version)
	EventRotate       EventKind = "rotate"       // rotate received (Version: the new version)
	EventEnrolled     EventKind = "enrolled"     // enroll sent
	EventCertStored   EventKind = "cert-stored"  // certificate verified and stored
	EventActivated    EventKind = "activated"    // new version active, confirmation sent
	EventRetired      EventKind = "retired"      // previous version deleted
	EventRejected     EventKind = "rejected"     // a downlink refused (Detail: reason)
	EventDisconnected EventKind = "disconnected" // session lost
	EventDelegation   EventKind = "delegation"   // a new online-key delegation accepted
)

// Event is one observable step of an agent.
type Event struct {
	Kind    EventKind
	Device  string
	Version uint32
	At      time.Time
	Detail  string
}

// Options configures an Agent. Zero values take the defaults.
type Options struct {
	// Dir is the keystore directory. Required unless Storage is set.
	Dir string
	// Storage, if set, holds the keystore instead of Dir (the simulator's
	// in-memory devices).
	Storage Storage
	// Topics is the deployment's topic layout; zero is the default "kf".
	Topics protocol.Topics
	// Brokers overrides the addresses in the keystore's identity: host:port
	// each, tried from a random one on, moving to the next when a
	// connection cannot be made or is lost (with the reconnect backoff).
	Brokers []string
	// Broker, when Brokers is empty, overrides them too: one address or
	// several separated by commas (fleet-agent's --broker).
	Broker string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnEvent, if set, is called for every Event, synchronously.
	OnEvent func(Event)
	// ReconnectMin and ReconnectMax bound the reconnect backoff; 0 means
	// 200 ms and 30 s. Each wait is jittered so a fleet does not return in
	// one instant.
	ReconnectMin, ReconnectMax time.Duration
	// Failpoint, if set, is called with a step name between steps; tests
	// and the simulator use it to crash an agent at a precise point.
	Failpoint func(step string)
	// NoSync skips fsync in keystore writes (see Keystore.SetSync). For the
	// simulator only.
	NoSync bool
	// ReportEvery is how often a connected agent says hello again, so the
	// server can resend a step whose message was lost; 0 means 1 hour.
	ReportEvery time.Duration
	// Link, if set, stands between the agent and its connection: it is
	// given every payload sent ("up") or received ("down") and returns the
	// payloads to pass on (none: dropped; two: duplicated), and may sleep
	// (delayed). The simulator's message faults; nil passes everything.
	Link func(dir string, payload []byte) [][]byte
	// StepTimeout is how long the agent waits for the server's answer to an
	// enroll before it says hello again, which makes the server resend
	// what is missing (a message can be lost at a broker); 0 means 30 s.
	StepTimeout time.Duration
	// AnchorSteps bounds how many anchor sets one message may take the
	// agent through; 0 means protocol.MaxChainSets.
	AnchorSteps int
	// Firmware, if set, turns on firmware updates.
	Firmware *FirmwareOptions
	// ReenrollBroker is where the birth credential connects to re-enrol;
	// empty means Broker. An external Mosquitto takes birth credentials on
	// a listener of their own (docs/operations.md, External brokers).
	ReenrollBroker string
	// ReenrollAfter is how long every credential must have been refused,
	// over at least two rounds, before the agent re-enrols with its birth
	// credential; 0 means one minute. It keeps a short server-side outage
	// from costing a healthy device its identity.
	ReenrollAfter time.Duration
	// Keys, if set, holds the device's private keys in a token (a TPM or
	// secure element; package device/hwkeys): every new key is generated
	// there and never leaves it. Nil keeps them in PEM files in Dir.
	Keys HardwareKeys
}

// Agent is one device's agent.
type Agent struct {
	ks     *Keystore
	codec  *protocol.Codec
	topics protocol.Topics
	opts   Options
	log    *slog.Logger

	inbox   chan inMsg
	gen     atomic.Uint64 // current connection generation
	waiting bool          // an enroll is out and its certificate has not come
	// delegMu guards online: the online keys whose delegations verified
	// under the update key, oldest accepted first (see delegations.go).
	delegMu   sync.Mutex
	online    []*onlineKey
	updateKID atomic.Pointer[[]byte]
	anchors   atomic.Pointer[anchors.Signed]
	keyMu     sync.Mutex
	keys      *datakey.Keyset
	fw        *firmware.Slots
	refused   int       // dial rounds in a row in which every credential was refused
	refusedAt time.Time // when the first of them was
	// reenrolled is set when a re-enrolment brought the identity: the
	// activation that follows is then not a full report (anchors, data
	// keys and firmware may lag), so a hello follows it.
	reenrolled bool
	lastSync   time.Time
	// missed is set when a downlink was refused for want of the delegation
	// that signs it; when that delegation arrives, a hello asks the server
	// to send the refused steps again.
	missed bool

	ring *brokerRing // the brokers and the one in use (run loop only)

	mu      sync.Mutex
	conn    *mqttc.Conn
	seen    map[string]time.Time
	bytesUp atomic.Uint64
	bytesDn atomic.Uint64
}

type inMsg struct {
	topic   string
	payload []byte
	lost    error
	gen     uint64
}

// deviceCurves are the key exchanges a device offers: X25519 first, P-256
// for brokers without it. The hybrid post-quantum X25519MLKEM768 that Go
// offers by default costs a constrained device a 1.2 KB key share and an
// ML-KEM key generation on every reconnect, which a rotation causes.
var deviceCurves = []tls.CurveID{tls.X25519, tls.CurveP256}

// errReconnect tells the run loop to reconnect (with a new credential).
var errReconnect = errors.New("device: reconnect")

// New opens the keystore and prepares an agent.
func New(opts Options) (*Agent, error) {
	st := opts.Storage
	if st == nil {
		st = &DirStorage{Dir: opts.Dir}
	}
	ks, err := Open(st)
	if err != nil {
		return nil, err
	}
	ks.SetSync(!opts.NoSync)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Keys != nil {
		if err := ks.UseHardware(opts.Keys, opts.Logger); err != nil {
			return nil, err
		}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = 200 * time.Millisecond
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = 30 * time.Second
	}
	if len(opts.Brokers) == 0 {
		opts.Brokers = SplitBrokers(opts.Broker)
	}
	if len(opts.Brokers) == 0 {
		opts.Brokers = SplitBrokers(ks.ID().Broker)
	}
	if opts.StepTimeout == 0 {
		opts.StepTimeout = 30 * time.Second
	}
	if opts.ReportEvery == 0 {
		opts.ReportEvery = time.Hour
	}
	if opts.ReenrollAfter == 0 {
		opts.ReenrollAfter = time.Minute
	}
	if opts.AnchorSteps == 0 {
		opts.AnchorSteps = protocol.MaxChainSets
	}
	a := &Agent{
		ks: ks, codec: protocol.NewCodec(), opts: opts, topics: opts.Topics,
		log:   opts.Logger.With("device", ks.ID().ID),
		inbox: make(chan inMsg, 64),
		seen:  map[string]time.Time{},
		ring:  newBrokerRing(opts.Brokers),
	}
	kid, err := protocol.KeyID(ks.UpdateKey())
	if err != nil {
		return nil, fmt.Errorf("device: update key: %w", err)
	}
	a.updateKID.Store(&kid)
	for _, load := range []func() error{a.loadAnchors, a.loadDataKeys, a.openFirmware} {
		if err := load(); err != nil {
			return nil, err
		}
	}
	a.loadDelegations()
	return a, nil
}

// Keystore returns the agent's keystore.
func (a *Agent) Keystore() *Keystore { return a.ks }

// Bytes returns the application payload bytes sent and received so far,
// including the current connection's.
func (a *Agent) Bytes() (up, down uint64) {
	up, down = a.bytesUp.Load(), a.bytesDn.Load()
	a.mu.Lock()
	if a.conn != nil {
		u, d := a.conn.Bytes()
		up, down = up+u, down+d
	}
	a.mu.Unlock()
	return up, down
}

func (a *Agent) emit(k EventKind, v uint32, detail string) {
	if a.opts.OnEvent != nil {
		a.opts.OnEvent(Event{Kind: k, Device: a.ks.ID().ID, Version: v, At: a.opts.Now(), Detail: detail})
	}
}

func (a *Agent) fail(step string) {
	if a.opts.Failpoint != nil {
		a.opts.Failpoint(step)
	}
}

// Run connects and serves until ctx ends. It reconnects by itself.
func (a *Agent) Run(ctx context.Context) error {
	backoff := a.opts.ReconnectMin
	var gen uint64
	for ctx.Err() == nil {
		gen++
		a.gen.Store(gen)
		conn, ver, err := a.dial(ctx, gen)
		if err != nil && a.refused >= 2 && time.Since(a.refusedAt) >= a.opts.ReenrollAfter {
			// Every credential refused, twice over and for a while: away
			// past every window. The birth credential asks for a new
			// identity.
			if _, _, berr := a.ks.BirthCredential(); berr == nil {
				gen++
				a.gen.Store(gen)
				rerr := a.reenroll(ctx, gen)
				if errors.Is(rerr, errReconnect) {
					a.refused = 0
					a.reenrolled = true
					backoff = a.opts.ReconnectMin
					continue
				}
				err = fmt.Errorf("%w; re-enrolment: %v", err, rerr)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			wait := backoff/2 + rand.N(backoff/2+1)
			// The first failure in a row is worth an operator's attention;
			// the retries that follow it are not.
			if backoff == a.opts.ReconnectMin {
				a.log.Warn("connect failed; retrying", "err", err, "retry_in", wait)
			} else {
				a.log.Debug("connect failed", "err", err, "retry_in", wait)
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			backoff = min(backoff*2, a.opts.ReconnectMax)
			continue
		}
		backoff = a.opts.ReconnectMin
		err = a.session(ctx, conn, ver, gen)
		a.closeConn()
		if err != nil && !errors.Is(err, errReconnect) && ctx.Err() == nil {
			a.log.Warn("session ended", "err", err)
			// The broker may be gone (its node stopped): the next
			// connection goes to the next broker.
			a.ring.next()
		}
	}
	return ctx.Err()
}

// errFlap is the connection loss Flap injects.
var errFlap = errors.New("device: connection dropped (injected)")

// Flap makes the agent lose its connection and reconnect, as a flaky link
// would. The simulator injects it.
func (a *Agent) Flap() {
	select {
	case a.inbox <- inMsg{lost: errFlap, gen: a.gen.Load()}:
	default:
	}
}

// Abort closes the agent's connection without another step, as the death
// of its process would. The simulator calls it for an agent that a crash
// failpoint has stopped; a new Agent on the same directory restarts it.
func (a *Agent) Abort() { a.closeConn() }

func (a *Agent) closeConn() {
	a.mu.Lock()
	c := a.conn
	a.conn = nil
	a.mu.Unlock()
	if c != nil {
		up, dn := c.Bytes()
		a.bytesUp.Add(up)
		a.bytesDn.Add(dn)
		c.Close()
	}
}

// dial connects with the pending credential if it has a certificate, else
// (or if the broker refuses it) with the active one. A pending credential
// the broker accepts is promoted at once.
func (a *Agent) dial(ctx context.Context, gen uint64) (*mqttc.Conn, uint32, error) {
	st := a.ks.State()
	var tries []uint32
	if v, ok := a.ks.PendingReady(); ok {
		tries = append(tries, v)
	}
	tries = append(tries, st.Active)
	var lastErr error
	refused := 0
	for _, v := range tries {
		conn, err := a.connect(ctx, v, gen)
		if err != nil {
			if errors.Is(err, mqttc.ErrRefused) {
				a.emit(EventRefused, v, err.Error())
				refused++
			}
			lastErr = err
			continue
		}
		a.refused = 0
		return conn, v, nil
	}
	if refused == len(tries) {
		if a.refused == 0 {
			a.refusedAt = time.Now()
		}
		a.refused++
	} else {
		a.refused = 0
		// Not a refusal of our credential: this broker cannot be reached
		// (or is not serving). The next attempt goes to the next one.
		if a.ring.next() {
			a.log.Debug("broker unreachable; moving to the next", "err", lastErr)
		}
	}
	return nil, 0, lastErr
}

func (a *Agent) connect(ctx context.Context, v uint32, gen uint64) (*mqttc.Conn, error) {
	cred, _, err := a.ks.TLSCredential(v)
	if err != nil {
		return nil, err
	}
	addr, host, err := a.brokerAddr()
	if err != nil {
		return nil, err
	}
	id := a.ks.ID().ID
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker:   addr,
		ClientID: id,
		TLS: &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: a.ks.Roots(), ServerName: host,
			MinVersion: tls.VersionTLS12, CurvePreferences: deviceCurves, Time: a.opts.Now},
		Subscriptions: []string{a.topics.Down(id)},
		// Refused to a device renewing an expired identity: it gets the
		// anchors and the delegation on its own topic instead.
		Optional: a.broadcasts(),
		OnMessage: func(topic string, payload []byte) {
			payloads := [][]byte{append([]byte(nil), payload...)}
			if a.opts.Link != nil {
				payloads = a.opts.Link("down", payloads[0])
			}
			for _, p := range payloads {
				select {
				case a.inbox <- inMsg{topic: topic, payload: p, gen: gen}:
				case <-ctx.Done():
				}
			}
		},
		OnLost: func(err error) {
			select {
			case a.inbox <- inMsg{lost: err, gen: gen}:
			case <-ctx.Done():
			}
		},
		KeepAlive: 5 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.conn = conn
	a.mu.Unlock()
	return conn, nil
}

// broadcasts lists the fleet-wide topics to subscribe to: the live ones.
// The retained anchor chain (kf/b/anchors) is not among them: the broker
// hands a retained message to every subscribe, a rotation reconnects and a
// sleeping device wakes with a new connection, so it would cost about 800
// bytes per set on each; the agent's hello already names the version it
// holds and fleetd answers with the sets it lacks.
func (a *Agent) broadcasts() []string {
	return []string{a.topics.Delegation(), a.topics.FirmwareTopic(), a.topics.AnchorsLive()}
}

func (a *Agent) session(ctx context.Context, conn *mqttc.Conn, ver uint32, gen uint64) error {
	a.emit(EventConnected, ver, "")
	st := a.ks.State()
	if st.Pending == ver {
		// The broker accepted the new credential: make it active, then
		// confirm. The confirmation is the report the server needs after
		// a rotation, so no hello follows it.
		if err := a.ks.Promote(ver); err != nil {
			return err
		}
		a.fail("after-promote")
		act := protocol.Stamp(&protocol.Activated{Slot: protocol.SlotIdentity, Version: ver}, a.opts.Now(), 0)
		act.RID = st.PendingRID
		if err := a.send(ctx, act); err != nil {
			return err
		}
		a.emit(EventActivated, ver, "")
		if a.reenrolled {
			a.reenrolled = false
			if err := a.hello(ctx); err != nil {
				return err
			}
		}
	} else if err := a.hello(ctx); err != nil {
		return err
	}
	step := time.NewTimer(a.opts.StepTimeout)
	defer step.Stop()
	report := time.NewTicker(a.opts.ReportEvery)
	defer report.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-report.C:
			if err := a.hello(ctx); err != nil {
				return err
			}
		case <-step.C:
			if a.waiting {
				a.log.Info("no answer to enroll; asking the server again")
				if err := a.hello(ctx); err != nil {
					return err
				}
			}
			step.Reset(a.opts.StepTimeout)
		case m := <-a.inbox:
			if m.gen != gen {
				continue // from an earlier connection
			}
			if a.waiting {
				step.Reset(a.opts.StepTimeout)
			}
			if m.lost != nil {
				a.emit(EventDisconnected, 0, m.lost.Error())
				return fmt.Errorf("device: connection lost: %w", m.lost)
			}
			if err := a.handle(ctx, m.topic, m.payload); err != nil {
				return err
			}
		}
	}
}

func (a *Agent) hello(ctx context.Context) error {
	st := a.ks.State()
	h := protocol.Stamp(&protocol.Hello{Slots: []protocol.SlotVersion{{
		Slot: protocol.SlotIdentity, Active: st.Active, Pending: st.Pending, Previous: st.Previous,
	}}}, a.opts.Now(), 0)
	h.Delegation = a.latestDelegation()
	h.Anchors = a.AnchorVersion()
	h.DataKeys, h.DataPrimary = a.heldKeys()
	h.Firmware = a.FirmwareVersion()
	a.lastSync = a.opts.Now()
	return a.send(ctx, h)
}

// send seals m with the active identity key and publishes it.
func (a *Agent) send(ctx context.Context, m protocol.Message) error {
	st := a.ks.State()
	key, err := a.ks.Signer(st.Active)
	if err != nil {
		return err
	}
	b, err := a.codec.Seal(m, key, a.ks.ID().ID)
	if err != nil {
		return err
	}
	a.mu.Lock()
	c := a.conn
	a.mu.Unlock()
	if c == nil {
		return errors.New("device: not connected")
	}
	payloads := [][]byte{b}
	if a.opts.Link != nil {
		payloads = a.opts.Link("up", b)
	}
	for _, p := range payloads {
		if err := c.Publish(ctx, a.topics.Up(a.ks.ID().ID), p); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) reject(reason string, err error) error {
	a.log.Warn("downlink rejected", "reason", reason, "err", err)
	a.emit(EventRejected, 0, reason)
	return nil // a bad downlink never ends the session
}

// handle processes one downlink. It returns errReconnect when the agent
// must reconnect with another credential.
func (a *Agent) handle(ctx context.Context, topic string, payload []byte) error {
	env, err := a.codec.Open(payload)
	if err != nil {
		return a.reject("malformed", err)
	}
	if env.IsSigned() && bytes.Equal(env.KID, *a.updateKID.Load()) {
		// Signed by the update key itself: only a delegation may be.
		if err := a.acceptDelegation(payload, true); err != nil {
			return a.reject("delegation", err)
		}
		if a.missed {
			a.missed = false
			return a.hello(ctx)
		}
		return nil
	}
	if env.IsSigned() {
		// The delegation the kid names; an expired one signs nothing more.
		k := a.onlineKeyFor(env.KID)
		if k == nil {
			// Signed by an online key we do not know yet (it was renewed
			// while we were away, the device moved to another node, or its
			// delegation is still on its way): ask for the current one.
			a.missed = true
			if a.opts.Now().Sub(a.lastSync) > 5*time.Second {
				if err := a.hello(ctx); err != nil {
					return err
				}
			}
			return a.reject("unknown-signer", fmt.Errorf("downlink signed by unknown key %x", env.KID))
		}
		if err := env.Verify(k.pub, a.ks.ID().ID); err != nil {
			return a.reject("bad-signature", err)
		}
	}
	m, err := a.codec.Message(env)
	if err != nil {
		return a.reject("malformed", err)
	}
	now := a.opts.Now()
	if err := protocol.CheckTime(m.Hdr(), now); err != nil {
		return a.reject("expired", err)
	}
	// Anchor sets and manifests carry their own signatures and are applied
	// idempotently; the retained copies come again at every connect.
	if t := protocol.TypeOf(m); t != protocol.TypeAnchors && t != protocol.TypeFirmware && a.replayed(m.Hdr(), now) {
		return a.reject("replay", fmt.Errorf("message %x seen before", m.Hdr().ID))
	}
	a.log.Debug("downlink", "type", protocol.TypeOf(m).String(), "id", fmt.Sprintf("%x", m.Hdr().ID))
	switch m := m.(type) {
	case *protocol.Rotate:
		return a.onRotate(ctx, m)
	case *protocol.Cert:
		return a.onCert(m)
	case *protocol.Anchors:
		return a.onAnchors(ctx, m, true, topic == a.topics.Down(a.ks.ID().ID))
	case *protocol.Key:
		return a.onKey(ctx, m)
	case *protocol.Firmware:
		return a.onFirmware(ctx, m)
	case *protocol.Retire:
		if m.Slot == protocol.SlotData {
			return a.retireDataKey(m.Version)
		}
		if m.Slot == protocol.SlotIdentity {
			ok, err := a.ks.Retire(m.Version)
			if err != nil {
				return err
			}
			if ok {
				a.emit(EventRetired, m.Version, "")
			}
		}
		return nil
	case *protocol.Error:
		a.log.Warn("server reported an error", "code", m.Code, "detail", m.Detail)
		return nil
	}
	return a.reject("unexpected-type", fmt.Errorf("%v on the down topic", protocol.TypeOf(m)))
}

// replayed remembers message ids until their expiry (or ten minutes).
func (a *Agent) replayed(h *protocol.Header, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, exp := range a.seen {
		if now.After(exp) {
			delete(a.seen, k)
		}
	}
	k := string(h.ID)
	if _, ok := a.seen[k]; ok {
		return true
	}
	exp := now.Add(10 * time.Minute)
	if h.Exp != 0 {
		exp = time.Unix(int64(h.Exp), 0).Add(protocol.MaxClockSkew)
	}
	a.seen[k] = exp
	return false
}

func (a *Agent) onRotate(ctx context.Context, m *protocol.Rotate) error {
	if m.Slot != protocol.SlotIdentity {
		return a.reject("unknown-slot", fmt.Errorf("slot %v", m.Slot))
	}
	st := a.ks.State()
	if m.Version <= st.Active {
		return a.reject("old-version", fmt.Errorf("rotate to %d, active %d", m.Version, st.Active))
	}
	a.emit(EventRotate, m.Version, "")
	if st.Pending == m.Version && bytes.Equal(st.PendingRID, m.RID) {
		if _, ok := a.ks.PendingReady(); ok {
			return errReconnect // we already hold the certificate: switch to it
		}
	}
	key, err := a.ks.BeginPending(m.Version, m.RID)
	if err != nil {
		return err
	}
	a.fail("after-pending-key")
	csr, err := CSR(a.ks.ID().ID, key)
	if err != nil {
		return err
	}
	e := protocol.Stamp(&protocol.Enroll{Slot: protocol.SlotIdentity, Version: m.Version, CSR: csr}, a.opts.Now(), 0)
	e.RID = m.RID
	if err := a.send(ctx, e); err != nil {
		return err
	}
	a.emit(EventEnrolled, m.Version, "")
	a.waiting = true
	a.fail("after-enroll")
	return nil
}

func (a *Agent) onCert(m *protocol.Cert) error {
	st := a.ks.State()
	if m.Slot != protocol.SlotIdentity || m.Version != st.Pending || !bytes.Equal(m.RID, st.PendingRID) {
		return a.reject("unexpected-cert", fmt.Errorf("cert for v%d, pending v%d", m.Version, st.Pending))
	}
	// The delivery leaves out the key we sent in the CSR: put it back,
	// then check the certificate as a whole.
	key, err := a.ks.Signer(m.Version)
	if err != nil {
		return a.reject("bad-cert", err)
	}
	der, err := protocol.ExpandLeaf(m.Cert, key.Public())
	if err != nil {
		return a.reject("bad-cert", err)
	}
	if _, err := a.ks.StorePendingCert(m.Version, der, a.opts.Now()); err != nil {
		return a.reject("bad-cert", err)
	}
	a.waiting = false
	a.emit(EventCertStored, m.Version, "")
	a.fail("after-cert-stored")
	return errReconnect
}
