package pgstore

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// mailChannel is the LISTEN/NOTIFY channel mail wakes its addressee on;
// the payload is the addressee's node id.
const mailChannel = "kf_mail"

// LISTEN/NOTIFY is the one PostgreSQL feature outside the SQL subset of
// the package doc, and nothing depends on it: it only wakes a node before
// its next poll, and is off on CockroachDB.

// notifier wakes the nodes of this process when mail is sent to them:
// one dedicated connection LISTENs on mailChannel for all of them. It is
// a speed-up only: a node polls its mail anyway, which is all it gets on
// CockroachDB (no LISTEN/NOTIFY there) and while the connection is down.
type notifier struct {
	detect   sync.Once
	isCRDB   bool
	mu       sync.Mutex
	chans    map[string]chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
	closed   bool
	connConf *pgx.ConnConfig
}

// cockroach reports whether the server is CockroachDB, asked once: an
// error counts as PostgreSQL (a NOTIFY that fails then fails Send's
// transaction, which is retried by the caller).
func (n *notifier) cockroach(ctx context.Context, s *Store) bool {
	n.detect.Do(func() {
		var v string
		if err := s.pool.QueryRow(ctx, `SELECT version()`).Scan(&v); err == nil {
			n.isCRDB = strings.Contains(v, "CockroachDB")
		}
	})
	return n.isCRDB
}

// Wake returns a channel that receives when mail for node may have
// arrived (a notification, or the listening connection came back after
// being lost), or nil on CockroachDB: poll only. The first call starts
// the listening connection.
func (s *Store) Wake(node string) <-chan struct{} {
	n := &s.notify
	if n.cockroach(context.Background(), s) {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	if n.chans == nil {
		n.chans = map[string]chan struct{}{}
	}
	ch, ok := n.chans[node]
	if !ok {
		ch = make(chan struct{}, 1)
		n.chans[node] = ch
	}
	if n.cancel == nil {
		cfg := s.pool.Config().ConnConfig.Copy()
		cfg.Tracer = nil // Stats count the store's statements, not the listener's
		ctx, cancel := context.WithCancel(context.Background())
		n.cancel, n.done, n.connConf = cancel, make(chan struct{}), cfg
		go n.listen(ctx)
	}
	return ch
}

// listen keeps a LISTEN connection and signals the addressees of
// notifications; after each (re)connect it signals every node, since
// notifications sent while it was away are lost.
func (n *notifier) listen(ctx context.Context) {
	defer close(n.done)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, n.connConf)
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+mailChannel); err == nil {
				wait = 100 * time.Millisecond
				n.signal("")
				for {
					nt, err := conn.WaitForNotification(ctx)
					if err != nil {
						break
					}
					n.signal(nt.Payload)
				}
			}
			conn.Close(context.Background())
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
			wait = min(2*wait, 5*time.Second)
		}
	}
}

// signal wakes node ("" wakes all) without blocking.
func (n *notifier) signal(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, ch := range n.chans {
		if node == "" || id == node {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// close stops the listening connection and waits for it.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	cancel, done := n.cancel, n.done
	n.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}
