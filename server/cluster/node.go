package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Options configures a Node. Zero values take the defaults.
type Options struct {
	// Store is the shared store; nil means Open's store if it is a
	// store.Cluster, else a single process.
	Store store.Cluster
	// NodeID names this process in the cluster; "" makes one from the
	// host name, the pid and a random suffix (new for every start, so a
	// restarted node never inherits its old rows).
	NodeID string
	// MQTT and Admin are where this node is reached, recorded for
	// operators (the nodes table); an empty MQTT is taken from the
	// embedded broker given to Closer.
	MQTT, Admin string
	// Codec tells signed downlinks from others; Topics is the layout.
	Codec  *protocol.Codec
	Topics protocol.Topics
	// Delegations returns this node's online-key delegation(s), sent
	// before a signed downlink forwarded to another node.
	Delegations func() [][]byte
	// OnReload is called for MailReload with a detail that neither
	// PolicyReload nor Resync takes.
	OnReload func(ctx context.Context, what string)
	// PolicyReload, if set, makes the running policy the newest one in the
	// store (policyrun.Service.Reload): on MailReload "policy" and every
	// PolicyEvery on every node, since a policy applied on one node
	// changes only that node's holder.
	PolicyReload func(ctx context.Context) (bool, error)
	// PolicyEvery is how often PolicyReload runs; 0 means 10 s.
	PolicyEvery time.Duration
	// Resync, if set, sends one device's state to an external broker again
	// (dynsec.Sync.Resync). The leader calls it for every device named in
	// MailDisconnect or MailReload "device:<id>", so that its delete lands
	// after any create its own replay sent.
	Resync func(ctx context.Context, device string)
	// Poll is how often mail is read without a wake-up; 0 means 250 ms.
	Poll time.Duration
	// LeaseTTL is how long a leader's lease and a node's heartbeat last;
	// 0 means 3 s.
	LeaseTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Local is this node's broker as far as sessions go; *broker.Embedded
// satisfies it.
type Local interface {
	Present(device string) bool
	ConnectedSince(device string) (time.Time, bool)
}

// Publisher sends on this node's MQTT session; *link.Link satisfies it.
type Publisher interface {
	Publish(ctx context.Context, topic string, b []byte) error
	PublishRetained(ctx context.Context, topic string, b []byte) error
}

// Node is this process's membership of the cluster.
type Node struct {
	o      Options
	cs     store.Cluster // nil: single process
	id     string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	started time.Time
	live    atomic.Pointer[[]store.Node] // as of the last heartbeat
	leading atomic.Bool
	pub     atomic.Pointer[publisherBox] // this node's link, for mail
	closer  atomic.Pointer[closerBox]    // this node's broker, for mail and presence

	sessMu   sync.Mutex
	up, down []store.Session // not yet written

	snapMu sync.Mutex
	snap   map[string]store.Session
	snapAt time.Time

	mailq chan queuedMail // downlinks for mailSender

	closeOnce sync.Once
}

type publisherBox struct{ p Publisher }
type closerBox struct{ c rotation.SessionCloser }

// Defaults of Options.
const (
	DefaultPoll     = 250 * time.Millisecond
	DefaultLeaseTTL = 3 * time.Second
	// sessionFlush is how often session changes are written.
	sessionFlush = 200 * time.Millisecond
	// mailPage is how much mail one Receive takes.
	mailPage = 256
	// leaderLease names the lease of the cluster-wide jobs.
	leaderLease = "leader"
)

// Open joins the cluster: it records this node alive (an unreachable
// store fails Open, returning the node unstarted) and starts the
// heartbeat, session and mail loops; Close leaves. With a store that is
// not a store.Cluster it returns a single-process node.
func Open(ctx context.Context, st store.Store, o Options) (*Node, error) {
	o.Poll = cmp.Or(o.Poll, DefaultPoll)
	o.LeaseTTL = cmp.Or(o.LeaseTTL, DefaultLeaseTTL)
	o.PolicyEvery = cmp.Or(o.PolicyEvery, 10*time.Second)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Codec == nil {
		o.Codec = protocol.NewCodec()
	}
	if o.Store == nil {
		o.Store, _ = st.(store.Cluster)
	}
	if o.NodeID == "" {
		o.NodeID = newNodeID()
	}
	n := &Node{o: o, cs: o.Store, id: o.NodeID, log: o.Logger.With("node", o.NodeID), started: o.Now(),
		mailq: make(chan queuedMail, mailQueue)}
	n.ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if n.cs == nil {
		return n, nil
	}
	// A node id given by the operator (--node-id) survives restarts: the
	// rows of its previous process (sessions it no longer holds, mail for
	// sessions gone) are removed first.
	if err := n.cs.Leave(ctx, n.id); err != nil {
		return n, fmt.Errorf("cluster: %w", err) // Join starts it anyway
	}
	if err := n.heartbeat(ctx); err != nil {
		return n, err
	}
	n.startLoops()
	n.log.Info("cluster: node joined", "mqtt", o.MQTT, "admin", o.Admin, "live", len(n.Live()))
	return n, nil
}

// startLoops starts the heartbeat, session, mail and mail-sending loops.
func (n *Node) startLoops() {
	if n.o.PolicyReload != nil {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.Every("policy reload", n.o.PolicyEvery, n.reloadPolicy)(n.ctx) }()
	}
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.heartbeats() }()
	go func() { defer n.wg.Done(); n.mailSender() }()
	go func() { defer n.wg.Done(); n.flushSessions() }()
	go func() { defer n.wg.Done(); n.mailLoop() }()
}

// Join is Open for fleetd's wiring: the node lives until ctx ends, and
// then leaves the cluster before wg is done, so that a server waiting for
// wg before closing its store lets it remove its rows first. A first
// heartbeat that fails is logged, not returned: the store was just
// reached by whoever opened it, and the heartbeat loop tries again.
func Join(ctx context.Context, wg *sync.WaitGroup, st store.Store, o Options) *Node {
	n, err := Open(ctx, st, o)
	if err != nil {
		n.log.Warn("cluster: first heartbeat failed; retrying", "err", err)
		n.startLoops()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		if err := n.Close(); err != nil {
			n.log.Warn("cluster: leaving failed; the leader sweeps this node's rows", "err", err)
		}
	}()
	return n
}

// newNodeID is host-pid-random: unique per process start.
func newNodeID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%04x", cmp.Or(host, "fleetd"), os.Getpid(), rand.N(1<<16))
}

// ID is this node's id.
func (n *Node) ID() string { return n.id }

// Clustered reports whether the store is shared by several processes;
// state kept in node-local files (anchors, firmware releases) must then
// not change.
func (n *Node) Clustered() bool { return n.cs != nil }

// Live returns the nodes alive at the last heartbeat (this one included);
// nil for a single process.
func (n *Node) Live() []store.Node {
	if p := n.live.Load(); p != nil {
		return *p
	}
	return nil
}

// others returns the ids of the other live nodes.
func (n *Node) others() []string {
	var out []string
	for _, x := range n.Live() {
		if x.ID != n.id {
			out = append(out, x.ID)
		}
	}
	return out
}

func (n *Node) heartbeat(ctx context.Context) error {
	mqtt := n.o.MQTT
	if cb := n.closer.Load(); mqtt == "" && cb != nil {
		if b, ok := cb.c.(interface{ Addr() string }); ok {
			mqtt = b.Addr() // the embedded broker's, once it listens
		}
	}
	live, err := n.cs.Heartbeat(ctx, store.Node{ID: n.id, MQTT: mqtt, Admin: n.o.Admin, Started: n.started}, n.o.LeaseTTL)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.live.Store(&live)
	return nil
}

// heartbeats renews this node's row every third of its TTL.
func (n *Node) heartbeats() {
	t := time.NewTicker(n.o.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if err := n.heartbeat(n.ctx); err != nil && n.ctx.Err() == nil {
			n.log.Warn("cluster: heartbeat failed", "err", err)
		}
	}
}

// Broadcast asks every other live node to reload what (MailReload).
func (n *Node) Broadcast(ctx context.Context, what string) error {
	if n.cs == nil {
		return nil
	}
	var mail []store.Mail
	for _, to := range n.others() {
		mail = append(mail, store.Mail{To: to, From: n.id, Kind: store.MailReload, Detail: what})
	}
	return n.cs.Send(ctx, mail...)
}

// mailLoop takes this node's mail on a wake-up or every Poll.
func (n *Node) mailLoop() {
	wake := n.cs.Wake(n.id)
	t := time.NewTicker(n.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
		n.takeMail(n.ctx)
	}
}

// takeMail handles every mail waiting, once this node's link is known
// (before that it stays in the store).
func (n *Node) takeMail(ctx context.Context) {
	pb := n.pub.Load()
	if pb == nil {
		return
	}
	var closer rotation.SessionCloser = noCloser{}
	if cb := n.closer.Load(); cb != nil {
		closer = cb.c
	}
	for ctx.Err() == nil {
		mail, err := n.cs.Receive(ctx, n.id, mailPage)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("cluster: mail not read", "err", err)
			}
			return
		}
		for _, m := range mail {
			n.handle(ctx, m, pb.p, closer)
		}
		if len(mail) < mailPage {
			return
		}
	}
}

func (n *Node) handle(ctx context.Context, m store.Mail, pub Publisher, closer rotation.SessionCloser) {
	log := n.log.With("from", m.From, "device", m.Device, "mail", m.ID)
	switch m.Kind {
	case store.MailDownlink:
		if n.reroute(ctx, m, log) {
			return
		}
		for _, p := range m.Payloads {
			if err := pub.Publish(ctx, m.Topic, p); err != nil {
				log.Warn("cluster: forwarded downlink not published", "topic", m.Topic, "err", err)
				return
			}
		}
		log.Debug("cluster: forwarded downlink published", "topic", m.Topic, "messages", len(m.Payloads))
	case store.MailDisconnect:
		dropped := closer.Disconnect(m.Device)
		log.Info("cluster: sessions dropped for another node", "sessions", dropped)
		if n.o.Resync != nil && n.Leading() {
			n.o.Resync(ctx, m.Device)
		}
	case store.MailDisconnectCredential:
		dropped := closer.DisconnectCredential(m.Device, m.Serial)
		log.Info("cluster: credential's sessions dropped for another node", "serial", m.Serial, "sessions", dropped)
	case store.MailReload:
		if d, ok := strings.CutPrefix(m.Detail, "device:"); ok && n.o.Resync != nil {
			if n.Leading() {
				n.o.Resync(ctx, d)
			}
		} else if m.Detail == "policy" && n.o.PolicyReload != nil {
			if err := n.reloadPolicy(ctx); err != nil {
				log.Warn("cluster: policy not reloaded", "err", err)
			}
		} else if n.o.OnReload != nil {
			n.o.OnReload(ctx, m.Detail)
		}
	default:
		log.Warn("cluster: mail of an unknown kind dropped", "kind", m.Kind)
	}
}

// rerouted marks (in Detail) a downlink mailed on by a node that did not
// hold the device: it is published where it lands, never mailed again.
const rerouted = "rerouted"

// reroute mails a device's downlink on to the node holding the device when
// it is not connected here (the sender's session snapshot was stale: the
// device moved), read fresh from the store, and reports whether it did.
// Held nowhere or here, the downlink is published here, as by its sender.
func (n *Node) reroute(ctx context.Context, m store.Mail, log *slog.Logger) bool {
	if m.Device == "" || m.Detail == rerouted || n.closer.Load() == nil || n.localPresent(m.Device) {
		return false
	}
	holder, err := n.holderNow(ctx, m.Device)
	if err != nil {
		log.Warn("cluster: downlink for a device not connected here published here", "err", err)
		return false
	}
	if holder == "" || holder == n.id {
		return false
	}
	m.To, m.From, m.Detail = holder, n.id, rerouted
	if err := n.sendMail(ctx, m); err != nil {
		log.Warn("cluster: downlink not mailed on to the device's node", "to", holder, "err", err)
		return true
	}
	log.Debug("cluster: downlink mailed on to the device's node", "to", holder)
	return true
}

// Close leaves the cluster: it stops the loops, writes the last session
// changes, gives up the lease if held and removes this node's rows, so
// that its devices' downlinks stop being mailed here at once.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.cancel()
		n.wg.Wait()
		if n.cs == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = errors.Join(n.cs.ReleaseLease(ctx, leaderLease, n.id), n.cs.Leave(ctx, n.id))
	})
	return err
}

// noCloser stands for a broker this node cannot drop sessions on (an
// external broker without dynsec): it has none to drop.
type noCloser struct{}

func (noCloser) Disconnect(string) int                   { return 0 }
func (noCloser) DisconnectCredential(string, string) int { return 0 }

// reloadPolicy runs PolicyReload and logs a change.
func (n *Node) reloadPolicy(ctx context.Context) error {
	changed, err := n.o.PolicyReload(ctx)
	if changed {
		n.log.Info("cluster: policy applied on another node now runs here")
	}
	return err
}
