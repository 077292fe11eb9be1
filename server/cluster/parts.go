package cluster

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
