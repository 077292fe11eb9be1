package cluster

import "context"

// Clusterable is a part that keeps state in node-local files (the anchor
// chain, firmware releases, campaigns of those kinds): while several
// processes share the store it must refuse to change that state, or the
// nodes would diverge.
type Clusterable interface{ SetClustered(on bool) }

// Freeze tells each part whether this process shares its store.
func (n *Node) Freeze(parts ...Clusterable) {
	for _, p := range parts {
		p.SetClustered(n.Clustered())
	}
}

// Replayer is an external broker kept in step with the store
// (dynsec.Sync): in a cluster only one process may replay the whole store
// to it, or a replay racing another process's revocation could bring a
// revoked device's client back.
type Replayer interface {
	SetReplay(gate func() bool)
	Replay(ctx context.Context)
}

// LeaderReplay makes, in a cluster, only the lease holder replay the store
// to r, and returns the leader job that replays when this node takes the
// lease (its broker session may have connected while another node led).
// In a single process r replays at every connect as before and the job
// does nothing.
func (n *Node) LeaderReplay(r Replayer) func(ctx context.Context) {
	if !n.Clustered() {
		return func(context.Context) {}
	}
	r.SetReplay(n.Leading)
	return r.Replay
}
