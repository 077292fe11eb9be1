package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/logx"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
)

// ErrNotAccepted is what a CredentialChecker's refusal wraps. Any other
// error means the check could not be made, and the broker drops the
// connection without refusing it. It is lifecycle's, so that the checker
// need not import the broker.
var ErrNotAccepted = lifecycle.ErrNotAccepted

// CredentialChecker decides whether a certificate may still log in. It is
// implemented by the rotation engine, which knows every version's state.
//
// For a device identity it checks the version's state; for a birth
// credential (identity.RoleIDevID) that the device is known, not revoked, and
// that this is the birth credential recorded for it. Refusals of revoked
// devices are audited by the checker.
type CredentialChecker interface {
	CheckCredential(ctx context.Context, id identity.Identity, leaf *x509.Certificate) error
}

// Denials counts refusals by reason; the metrics layer reads it.
type Denials struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (d *Denials) add(reason string) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[string]uint64{}
	}
	d.m[reason]++
	d.mu.Unlock()
}

// Snapshot returns the counts so far.
func (d *Denials) Snapshot() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]uint64, len(d.m))
	for k, v := range d.m {
		out[k] = v
	}
	return out
}

// identities maps live clients to the identity their certificate proved
// and that certificate's serial.
type identities struct {
	m      sync.Map // *mqtt.Client -> session
	latest sync.Map // client id -> *mqtt.Client: the newest authenticated session
}

type session struct {
	id     identity.Identity
	serial string // hex, as the store records it
	access policy.Access
	at     time.Time // when it was accepted
}

func (i *identities) get(cl *mqtt.Client) (session, bool) {
	v, ok := i.m.Load(cl)
	if !ok {
		return session{}, false
	}
	return v.(session), true
}

// AuthHook authenticates connections by their TLS client certificate.
type AuthHook struct {
	mqtt.HookBase
	srv     *mqtt.Server
	ids     *identities
	checker CredentialChecker
	trust   Trust
	policy  policy.Source
	// onRestore is told of a device session restored after mochi's
	// clean-up race, so that what was sent meanwhile is sent again.
	onRestore func(device string)
	// onSession is told of device sessions accepted and ended (Options.OnSession).
	onSession func(device string, since time.Time, up bool)
	// gate, if set, keeps devices out until fleetd reads their uplinks.
	gate     *serverGate
	now      func() time.Time
	denials  *Denials
	log      *slog.Logger
	logs     *logx.Limiter // one refusal line per client and reason per interval
	accepted atomic.Uint64
}

// ID names the hook.
func (h *AuthHook) ID() string { return "keyfleet-auth" }

// Provides lists the events the hook handles.
func (h *AuthHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnDisconnect}, []byte{b})
}

// OnConnectAuthenticate accepts a client whose verified certificate names
// it and whose credential the checker accepts.
func (h *AuthHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		h.deny(cl, "no-tls", nil)
		return false
	}
	state := tc.ConnectionState()
	if len(state.PeerCertificates) == 0 {
		h.deny(cl, "no-client-cert", nil)
		return false
	}
	// The TLS layer only asked for a certificate and its proof of
	// possession; trust is decided here, on fleetd's clock, so that an
	// expired identity can still renew and a birth credential re-enrol.
	leaf := state.PeerCertificates[0]
	id, access, err := Classify(state.PeerCertificates, h.trust, h.policy.Current(), h.now())
	if err != nil {
		reason := "untrusted"
		if access == policy.AccessExpired {
			reason = "expired"
		} else if errors.Is(err, identity.ErrNoIdentity) {
			reason = "no-identity"
		}
		h.deny(cl, reason, err)
		return false
	}
	switch id.Role {
	case identity.RoleDevice, identity.RoleIDevID:
		if cl.ID != id.Name {
			h.deny(cl, "client-id-mismatch", nil)
			return false
		}
		if pk.Connect.WillFlag {
			// mochi publishes a will without asking the ACL hook: a device
			// could reach any topic, retained broadcasts included, by
			// dropping its connection. keyfleet's agents set none.
			h.deny(cl, "will-not-allowed", nil)
			return false
		}
		if !h.gate.admits() {
			// No CONNACK, as below: a network failure to the device.
			h.denials.add("auth:server-not-subscribed")
			h.logs.Log(h.log, slog.LevelInfo, "auth:server-not-subscribed", "broker: device held back until fleetd subscribes to the uplinks", "client", cl.ID)
			cl.Stop(errServerNotSubscribed)
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.checker.CheckCredential(ctx, id, leaf); err != nil {
			if !errors.Is(err, ErrNotAccepted) {
				// fleetd could not decide (store error, timeout): drop the
				// connection without a CONNACK, so the device sees a network
				// failure and retries, instead of a refusal that counts
				// towards re-enrolment.
				h.denials.add("auth:unavailable")
				h.logs.Log(h.log, slog.LevelError, cl.ID+"/auth:unavailable", "broker: credential check failed; connection dropped", "client", cl.ID, "err", err)
				cl.Stop(err)
				return false
			}
			h.deny(cl, "credential-refused", err)
			return false
		}
	case identity.RoleServer:
		if cl.ID != id.Name && !strings.HasPrefix(cl.ID, id.Name+"-") {
			h.deny(cl, "client-id-mismatch", nil)
			return false
		}
	default:
		h.deny(cl, "role-not-allowed", nil)
		return false
	}
	if access != policy.AccessFull {
		h.logs.Log(h.log, slog.LevelInfo, cl.ID+"/restricted", "broker: restricted session", "device", id.Name, "access", access.String(), "serial", leaf.SerialNumber.Text(16))
	}
	h.settleTakeover(cl)
	at := h.now()
	h.ids.m.Store(cl, session{id: id, serial: leaf.SerialNumber.Text(16), access: access, at: at})
	h.ids.latest.Store(cl.ID, cl)
	if h.onSession != nil && id.Role != identity.RoleServer {
		h.onSession(cl.ID, at, true)
	}
	h.accepted.Add(1)
	return true
}

// settleTakeover ends an existing session with the same client id before
// mochi's own takeover runs. mochi 2.7.9 races there for clean sessions: the
// old connection's clean-up can run after the new client is registered and
// delete it from the client map, leaving a connected, subscribed device
// that never receives another message (seen when a device reconnects before
// the broker noticed its old connection died). Waiting, for at most
// takeoverWait, until the old session is gone closes that window; only
// reconnects with a live predecessor pay it.
func (h *AuthHook) settleTakeover(cl *mqtt.Client) {
	if h.srv == nil {
		return
	}
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl || !old.Properties.Clean {
		return
	}
	_ = h.srv.DisconnectClient(old, packets.ErrSessionTakenOver)
	deadline := time.Now().Add(takeoverWait)
	for time.Now().Before(deadline) {
		if cur, ok := h.srv.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/takeover-slow", "broker: previous session of a client id did not end in time", "client", cl.ID)
}

// takeoverWait bounds how long a connection waits for the session it takes
// over to end.
const takeoverWait = 2 * time.Second

// OnDisconnect forgets the client, and repairs what mochi is about to
// break when a newer session with the same client id is already live.
//
// mochi 2.7.9 ends a clean session that was not taken over by removing
// its client id from the client map and its subscriptions from the topic
// index, by id, after this hook. When two connections with one id overlap
// (a device reconnecting while an older connection, or a second client
// with its id, is still ending), that removes the newer, live session: it
// stays connected and never receives another message. settleTakeover
// closes most of that window; the rest is closed here: once the old
// session's clean-up has run, the live one is put back in the client map
// and its subscriptions back in the index (both idempotent).
func (h *AuthHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	s, known := h.ids.get(cl)
	h.ids.m.Delete(cl)
	if h.ids.latest.CompareAndDelete(cl.ID, cl) && known && h.onSession != nil && s.id.Role != identity.RoleServer {
		h.onSession(cl.ID, s.at, false)
	}
	if h.srv == nil || !expire || cl.IsTakenOver() {
		return
	}
	v, ok := h.ids.latest.Load(cl.ID)
	if !ok {
		return
	}
	live := v.(*mqtt.Client)
	if live == cl {
		return
	}
	go func() {
		// mochi's clean-up follows this hook within microseconds: watch
		// for it closely for a while, then check once more.
		deadline := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(deadline) {
			if cur, ok := h.srv.Clients.Get(live.ID); !ok || cur != live {
				break
			}
			time.Sleep(time.Millisecond)
		}
		h.restore(live)
		time.Sleep(100 * time.Millisecond)
		h.restore(live)
	}()
}

// restore puts a live session back in mochi's client map and topic index.
func (h *AuthHook) restore(live *mqtt.Client) {
	if live.Closed() {
		return
	}
	if cur, ok := h.srv.Clients.Get(live.ID); ok && cur != live {
		return // yet another session took over since
	}
	restored := false
	if _, ok := h.srv.Clients.Get(live.ID); !ok {
		h.srv.Clients.Add(live)
		restored = true
	}
	for _, sub := range live.State.Subscriptions.GetAll() {
		if h.srv.Topics.Subscribe(live.ID, sub) {
			restored = true
		}
	}
	if restored {
		h.denials.add("broker:session-restored")
		h.logs.Log(h.log, slog.LevelWarn, live.ID+"/session-restored", "broker: restored a session an overlapping connection's clean-up had removed", "client", live.ID)
		// Whatever was published to it meanwhile is lost: ask for it again.
		if s, ok := h.ids.get(live); ok && h.onRestore != nil && s.id.Role == identity.RoleDevice {
			h.onRestore(live.ID)
		}
	}
}

func (h *AuthHook) deny(cl *mqtt.Client, reason string, err error) {
	h.denials.add("auth:" + reason)
	attrs := []any{"client", cl.ID, "remote", cl.Net.Remote, "reason", reason}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/auth:"+reason, "broker: connection refused", attrs...)
}

// ACLHook enforces the topic rules, and the limits on what a device may
// publish: no retained messages, and no more than its token bucket allows.
type ACLHook struct {
	mqtt.HookBase
	srv     *mqtt.Server // to disconnect; nil in tests of the rules alone
	ids     *identities
	topics  protocol.Topics
	denials *Denials
	log     *slog.Logger
	logs    *logx.Limiter // one line per client and reason per interval
	limits  *uplinkLimits // nil: no per-device limit
}

// ID names the hook.
func (h *ACLHook) ID() string { return "keyfleet-acl" }

// Provides lists the events the hook handles.
func (h *ACLHook) Provides(b byte) bool { return b == mqtt.OnACLCheck || b == mqtt.OnPublish }

// OnACLCheck allows what the identity's role may do and nothing else. Every
// publish a device attempts passes here first, allowed or not, so this is
// also where it spends a token of its bucket: a device over its limit is
// refused, disconnected and counted as "flood".
func (h *ACLHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s, ok := h.ids.get(cl)
	if ok && write && h.limits != nil && isDevice(s.id.Role) && !h.limits.allow(s.id.Name, time.Now()) {
		h.denials.add("flood")
		h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/flood", "broker: device over its uplink limit; disconnected",
			"client", cl.ID, "rate", h.limits.rate, "burst", h.limits.burst)
		h.disconnect(cl, packets.ErrQuotaExceeded)
		return false
	}
	if ok && Allowed(h.topics, s.id, s.access, topic, write) {
		return true
	}
	dir := "read"
	if write {
		dir = "write"
	}
	h.denials.add("acl:" + dir)
	h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/acl:"+dir, "broker: topic denied", "client", cl.ID, "topic", topic, "write", write)
	return false
}

// OnPublish refuses a device's retained publish (counted as acl:retain) and
// disconnects the device: a retained uplink would be handed to every later
// subscriber of the up topics, and no agent sets the flag. It runs after
// OnACLCheck allowed the topic.
func (h *ACLHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !pk.FixedHeader.Retain {
		return pk, nil
	}
	s, ok := h.ids.get(cl)
	if ok && !isDevice(s.id.Role) {
		return pk, nil
	}
	h.denials.add("acl:retain")
	h.logs.Log(h.log, slog.LevelWarn, cl.ID+"/acl:retain", "broker: retained publish refused; disconnected", "client", cl.ID, "topic", pk.TopicName)
	h.disconnect(cl, packets.ErrNotAuthorized)
	return pk, packets.ErrRejectPacket
}

func (h *ACLHook) disconnect(cl *mqtt.Client, code packets.Code) {
	if h.srv != nil {
		_ = h.srv.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}

// isDevice reports whether role is a device's (its identity or its birth
// credential): the clients the per-device limits apply to.
func isDevice(r identity.Role) bool { return r == identity.RoleDevice || r == identity.RoleIDevID }

// Allowed is the access rule, kept pure so it can be table-tested and
// reused to derive a Mosquitto ACL:
//   - a device with full access writes its up topic and reads its down
//     topic and the broadcasts;
//   - a device renewing an expired identity reaches its up and down topics
//     only: enough to rotate, nothing else;
//   - a birth credential reaches its re-enrolment topics only;
//   - fleetd reads the shared subscriptions and writes under the prefix.
func Allowed(t protocol.Topics, id identity.Identity, access policy.Access, topic string, write bool) bool {
	switch id.Role {
	case identity.RoleDevice:
		switch access {
		case policy.AccessFull:
		case policy.AccessRenew:
			if write {
				return topic == t.Up(id.Name)
			}
			return topic == t.Down(id.Name)
		default:
			return false
		}
		if write {
			return topic == t.Up(id.Name)
		}
		if topic == t.Down(id.Name) || topic == t.Broadcast() {
			return true
		}
		// A concrete broadcast topic, with no wildcard in it.
		b := strings.TrimSuffix(t.Broadcast(), "#")
		return strings.HasPrefix(topic, b) && len(topic) > len(b) && !strings.ContainsAny(topic, "+#")
	case identity.RoleIDevID:
		if access != policy.AccessEnroll {
			return false
		}
		if write {
			return topic == t.Reenroll(id.Name)
		}
		return topic == t.ReenrollDown(id.Name)
	case identity.RoleServer:
		if !write && (topic == t.SharedUp(ServerShareGroup) || topic == t.SharedReenroll(ServerShareGroup)) {
			return true
		}
		return strings.HasPrefix(topic, t.Root()+"/")
	}
	return false
}

// ServerShareGroup is the shared-subscription group fleetd instances join.
const ServerShareGroup = "fleetd"
