package cluster

import (
	"context"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// snapshotAge is how old the cluster's session table may be when
// Sessions answers from it.
const snapshotAge = time.Second

// Sessions answers for the whole cluster whether a device is connected,
// and since when: the campaign runner's view, which on one node would see
// only that node's devices.
type Sessions struct {
	n     *Node
	local Local
}

// Sessions wraps this node's broker; for a single process it answers
// from local alone.
func (n *Node) Sessions(local Local) *Sessions { return &Sessions{n: n, local: local} }

// Present reports whether the device has a session here or on a live node.
func (s *Sessions) Present(device string) bool {
	if s.local.Present(device) {
		return true
	}
	_, ok := s.remote(device)
	return ok
}

// ConnectedSince returns when the device's session was accepted, here or
// on the node holding it.
func (s *Sessions) ConnectedSince(device string) (time.Time, bool) {
	if at, ok := s.local.ConnectedSince(device); ok {
		return at, true
	}
	x, ok := s.remote(device)
	return x.Since, ok
}

// remote looks the device up in a snapshot of the sessions of the other
// live nodes.
func (s *Sessions) remote(device string) (store.Session, bool) {
	n := s.n
	if n.cs == nil {
		return store.Session{}, false
	}
	x, ok := n.snapshot()[device]
	return x, ok && x.Node != n.id
}

// snapshot returns the sessions of every live node, read at most once per
// snapshotAge; callers arriving during a read wait for it rather than
// reading too. Nil when never read successfully.
func (n *Node) snapshot() map[string]store.Session {
	n.snapMu.Lock()
	defer n.snapMu.Unlock()
	if n.snap == nil || time.Since(n.snapAt) > snapshotAge {
		ctx, cancel := context.WithTimeout(n.ctx, mailTimeout)
		snap, err := n.cs.Sessions(ctx, nil)
		cancel()
		if err != nil {
			n.log.Warn("cluster: sessions not read", "err", err)
		} else {
			n.snap = snap
		}
		n.snapAt = time.Now() // on error too: one try per interval
	}
	return n.snap
}

// SessionObserver is broker.Options.OnSession: it queues the sessions
// the broker accepts and loses, written in batches every 200 ms. Nil for
// a single process.
func (n *Node) SessionObserver() func(device string, since time.Time, up bool) {
	if n.cs == nil {
		return nil
	}
	return func(device string, since time.Time, up bool) {
		x := store.Session{Device: device, Node: n.id, Since: since}
		n.sessMu.Lock()
		if up {
			n.up = append(n.up, x)
		} else {
			n.down = append(n.down, x)
		}
		n.sessMu.Unlock()
	}
}

// flushSessions writes the queued session changes every sessionFlush;
// a batch that fails is kept and written with the next.
func (n *Node) flushSessions() {
	t := time.NewTicker(sessionFlush)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.sessMu.Lock()
		up, down := n.up, n.down
		n.up, n.down = nil, nil
		n.sessMu.Unlock()
		if len(up) == 0 && len(down) == 0 {
			continue
		}
		if err := n.cs.PutSessions(n.ctx, n.id, up, down); err != nil {
			if n.ctx.Err() != nil {
				return
			}
			n.log.Warn("cluster: sessions not written; retrying", "up", len(up), "down", len(down), "err", err)
			n.sessMu.Lock()
			n.up, n.down = append(up, n.up...), append(down, n.down...)
			n.sessMu.Unlock()
		}
	}
}
