package cluster

import (
	"context"
	"sync"
	"time"
)

// Lead tries for the lease and renews it every third of its TTL (1 s for
// 3 s), and a leader stops a sixth of the TTL before the lease may have
// run out (2.5 s after its last renewal): its clock may run slow against
// the database's.
func (n *Node) leaseEvery() time.Duration  { return n.o.LeaseTTL / 3 }
func (n *Node) leaseMargin() time.Duration { return n.o.LeaseTTL / 6 }

// Leading reports whether this node holds the leader lease now (always
// true for a single process): the gate of work one node must do.
func (n *Node) Leading() bool { return n.cs == nil || n.leading.Load() }

// Lead runs fn while this node holds the leader lease, and blocks until
// ctx ends. fn's context ends when the lease is lost: a renewal failed,
// or the last successful one is older than the TTL less a margin (the
// monotonic clock decides, so a stalled node stops before another may
// take over). Lead then waits for fn to return and tries again; when ctx
// ends it releases the lease, so that another node takes over at once.
// For a single process it just runs fn(ctx).
func (n *Node) Lead(ctx context.Context, fn func(ctx context.Context)) {
	if n.cs == nil {
		fn(ctx)
		return
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := n.cs.ReleaseLease(rctx, leaderLease, n.id); err != nil {
			n.log.Warn("cluster: leader lease not released", "err", err)
		}
	}()
	t := time.NewTicker(n.leaseEvery())
	defer t.Stop()
	for {
		if term, ok := n.tryLease(ctx); ok {
			n.lead(ctx, term, fn, t)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tryLease takes or renews the lease; it reports the term and whether
// this node holds it.
func (n *Node) tryLease(ctx context.Context) (uint64, bool) {
	term, ok, err := n.cs.Lease(ctx, leaderLease, n.id, n.o.LeaseTTL)
	if err != nil {
		if ctx.Err() == nil {
			n.log.Warn("cluster: leader lease not read", "err", err)
		}
		return 0, false
	}
	return term, ok
}

// lead runs fn for one term and renews the lease until it is lost or ctx
// ends.
func (n *Node) lead(ctx context.Context, term uint64, fn func(context.Context), t *time.Ticker) {
	renewed := time.Now()
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	n.leading.Store(true)
	n.log.Info("cluster: leading", "term", term)
	go func() { defer close(done); fn(lctx) }()
	defer func() {
		n.leading.Store(false)
		cancel()
		<-done
	}()
	deadline := time.NewTimer(n.o.LeaseTTL - n.leaseMargin())
	defer deadline.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return // fn gave up on its own; the lease is renewed by the next try
		case <-deadline.C:
			n.log.Warn("cluster: leader lease ran out before it was renewed; stepping down", "term", term, "renewed", time.Since(renewed))
			return
		case <-t.C:
		}
		got, ok := n.tryLease(ctx)
		if !ok || got != term {
			if ctx.Err() == nil {
				n.log.Warn("cluster: leader lease lost; stepping down", "term", term)
			}
			return
		}
		renewed = time.Now()
		deadline.Reset(n.o.LeaseTTL - n.leaseMargin())
	}
}

// RunLeader runs the cluster-wide jobs (campaign runner, policy scheduler,
// ...) side by side under the leader lease, until ctx ends; wg counts it.
// In a cluster the leader also sweeps the rows of nodes dead for
// deadNodeAge.
func (n *Node) RunLeader(ctx context.Context, wg *sync.WaitGroup, jobs ...func(ctx context.Context)) {
	if n.cs != nil {
		jobs = append(jobs, n.Every("sweep dead nodes", sweepEvery, n.sweep))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.Lead(ctx, func(ctx context.Context) {
			var jw sync.WaitGroup
			for _, job := range jobs {
				jw.Add(1)
				go func() { defer jw.Done(); job(ctx) }()
			}
			jw.Wait()
		})
	}()
}

// Dead nodes' rows (sessions, mail) are removed by the leader every
// sweepEvery once the node has been silent for deadNodeAge: long enough
// that a node stalled by a slow disk comes back to its rows.
const (
	sweepEvery  = 10 * time.Second
	deadNodeAge = 30 * time.Second
)

func (n *Node) sweep(ctx context.Context) error {
	removed, err := n.cs.Sweep(ctx, deadNodeAge)
	if removed > 0 {
		n.log.Info("cluster: rows of dead nodes removed", "rows", removed)
	}
	return err
}

// Every makes a job for RunLeader that calls fn every d until ctx ends,
// logging its errors under name (the next round tries again): the grace
// sweep, for one.
func (n *Node) Every(name string, d time.Duration, fn func(ctx context.Context) error) func(ctx context.Context) {
	return func(ctx context.Context) {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("cluster: periodic job failed", "job", name, "err", err)
			}
		}
	}
}

// ReplayGate is the gate of a part that brings an external broker in step
// with the whole store each time its session connects
// (dynsec.Sync.SetReplay): nil for a single process, which always
// replays; Leading in a cluster, where workers share the broker and one
// replaying process keeps a replay from racing another's revocation.
func (n *Node) ReplayGate() func() bool {
	if n.cs == nil {
		return nil
	}
	return n.Leading
}

// AtTakeover makes a job for RunLeader that runs fn once at the start of
// every leadership term, in a cluster only: a new leader brings the
// external broker in step (dynsec.Sync.Replay), since its session
// connected while another node led and so did not replay then. A single
// process replays at connect instead.
func (n *Node) AtTakeover(fn func(ctx context.Context)) func(ctx context.Context) {
	return func(ctx context.Context) {
		if n.cs != nil {
			fn(ctx)
		}
	}
}
