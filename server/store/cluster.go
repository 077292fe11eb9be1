package store

import (
	"context"
	"errors"
	"time"
)

// Cluster is the optional capability of a store that several fleetd processes share:
// their liveness, one lease per cluster-wide job, where each device's session is, and
// mail between them. bbolt has none; fleetd then runs as one process.
type Cluster interface {
	// Heartbeat records that n is alive for ttl from now (on the
	// database's clock) and returns every node alive now, n included.
	Heartbeat(ctx context.Context, n Node, ttl time.Duration) (live []Node, err error)
	// Leave removes a node that stops cleanly: its row, its sessions and
	// the mail addressed to it.
	Leave(ctx context.Context, node string) error
	// Lease takes or renews the lease name for holder for ttl. ok is false
	// while another holder's lease runs. term grows by one each time the
	// lease changes hands and stays the same on renewal.
	Lease(ctx context.Context, name, holder string, ttl time.Duration) (term uint64, ok bool, err error)
	// ReleaseLease ends holder's lease now, so that another node takes it
	// without waiting for the ttl; a lease holder no longer holds is kept.
	ReleaseLease(ctx context.Context, name, holder string) error
	// PutSessions records the sessions node accepted (up) and lost
	// (down). A down removes a device's row only if it is still node's
	// session of that Since: a late close never erases a reconnect.
	PutSessions(ctx context.Context, node string, up, down []Session) error
	Sessions(ctx context.Context, devices []string) (map[string]Session, error) // nil: all; live nodes only
	Send(ctx context.Context, mail ...Mail) error
	Receive(ctx context.Context, node string, max int) ([]Mail, error) // takes them, oldest first
	Wake(node string) <-chan struct{}                                  // nil: poll only
	// Sweep removes the rows of nodes dead for longer than deadFor (node,
	// sessions, mail to it) and returns how many rows it removed.
	Sweep(ctx context.Context, deadFor time.Duration) (int, error)
}

// Node is one fleetd process of a cluster: where devices and operators
// reach it, when it started and when it was last heard of.
type Node struct {
	ID, MQTT, Admin string
	Started, Seen   time.Time
}

// Session says which node holds a device's newest session, since when (the
// node's clock at accept).
type Session struct {
	Device, Node string
	Since        time.Time
}

// MailKind says what a node asks another to do.
type MailKind uint8

// Mail kinds.
const (
	// MailDownlink: publish Payloads, in order, on Topic.
	MailDownlink MailKind = iota + 1
	// MailDisconnect: drop every session of Device (revocation).
	MailDisconnect
	// MailDisconnectCredential: drop Device's sessions that logged in
	// with the certificate of Serial.
	MailDisconnectCredential
	// MailReload: reload what Detail names ("policy", "device:<id>").
	MailReload
)

// Mail is one message between nodes, kept in the store until its
// addressee takes it.
type Mail struct {
	ID                            int64
	To, From                      string
	Kind                          MailKind
	Device, Topic, Serial, Detail string
	Payloads                      [][]byte
	At                            time.Time
}

// ErrClustered: what was asked changes state that each fleetd process
// keeps in its own data directory (the anchor chain, firmware releases),
// so it is refused while several processes share the store, which would
// otherwise diverge.
var ErrClustered = errors.New("store: not available while several fleetd processes share the store")
