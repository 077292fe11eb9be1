package device

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/keyfleet/keyfleet/protocol"
)

// MaxDelegations bounds the online-key delegations an agent holds at once.
// Every fleetd node (and every fleetd start) has its own online key, so a
// device that moves between nodes, or outlives a restart, needs more than
// one; a bound keeps a replaying or misbehaving server from growing the
// keystore without limit. When full, the soonest-expiring one goes.
const MaxDelegations = 8

// Paths of the delegations in the keystore directory.
const (
	fileDelegations = "delegations.json"
	// fileDelegLegacy is the single delegation older agents kept; it is
	// read when fileDelegations is absent and removed once that is written.
	fileDelegLegacy = "delegation.cose"
)

// onlineKey is one server online key, as certified by a delegation that
// verified under the current update key.
type onlineKey struct {
	pub      *ecdsa.PublicKey
	kid      []byte
	notAfter uint64
	raw      []byte // the sealed delegation, kept for the keystore
}

// delegationFile is the JSON form of fileDelegations: the sealed
// delegations in the order they were accepted, oldest first.
type delegationFile struct {
	Delegations [][]byte `json:"delegations"`
}

// Delegations returns the stored online-key delegations, oldest accepted
// first (nil if none). They are as received: the caller verifies them.
func (ks *Keystore) Delegations() [][]byte {
	b, err := ks.st.ReadFile(fileDelegations)
	if err != nil {
		if b, err := ks.st.ReadFile(fileDelegLegacy); err == nil {
			return [][]byte{b}
		}
		return nil
	}
	var f delegationFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil // unreadable: the next hello fetches the current one
	}
	return f.Delegations
}

// Delegation returns the delegation accepted last, or nil: the one whose
// key id a hello reports.
func (ks *Keystore) Delegation() []byte {
	ds := ks.Delegations()
	if len(ds) == 0 {
		return nil
	}
	return ds[len(ds)-1]
}

// SaveDelegations replaces the stored delegations with ds (verified,
// oldest accepted first) in one atomic write, so a restarted agent checks
// downlinks from every node it knew before any server resends them.
func (ks *Keystore) SaveDelegations(ds [][]byte) error {
	b, err := json.Marshal(delegationFile{Delegations: ds})
	if err != nil {
		return fmt.Errorf("device: save delegations: %w", err)
	}
	if err := ks.write(fileDelegations, b, 0o644); err != nil {
		return fmt.Errorf("device: save delegations: %w", err)
	}
	if err := ks.st.RemoveAll(fileDelegLegacy); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("device: remove old delegation: %w", err)
	}
	return nil
}

// loadDelegations takes the stored delegations that still verify under
// the current update key; expired ones and those of an earlier update key
// are dropped (the next hello asks for the current one).
func (a *Agent) loadDelegations() {
	for _, b := range a.ks.Delegations() {
		_ = a.acceptDelegation(b, false)
	}
}

// acceptDelegation verifies a delegation under the current update key and
// adds the key it certifies to the set held, the newest accepted. A
// delegation already held is not added again, nor does an older one for
// the same key replace a longer one. With persist the set is saved.
func (a *Agent) acceptDelegation(b []byte, persist bool) error {
	pub, d, err := a.codec.VerifyDelegation(b, a.ks.UpdateKey(), a.opts.Now())
	if err != nil {
		return err
	}
	kid, err := protocol.KeyID(pub)
	if err != nil {
		return err
	}
	a.delegMu.Lock()
	defer a.delegMu.Unlock()
	set := a.liveDelegations()
	if i := slices.IndexFunc(set, func(k *onlineKey) bool { return bytes.Equal(k.kid, kid) }); i >= 0 {
		if set[i].notAfter >= d.NotAfter {
			a.online = set
			return nil // replayed, or an older copy
		}
		set = slices.Delete(set, i, i+1)
	}
	set = append(set, &onlineKey{pub: pub, kid: kid, notAfter: d.NotAfter, raw: b})
	for len(set) > MaxDelegations {
		soonest := 0
		for i, k := range set {
			if k.notAfter < set[soonest].notAfter {
				soonest = i
			}
		}
		set = slices.Delete(set, soonest, soonest+1)
	}
	a.online = set
	if !slices.ContainsFunc(set, func(k *onlineKey) bool { return bytes.Equal(k.kid, kid) }) {
		return nil // evicted at once: it expires before all the others
	}
	if !persist {
		return nil
	}
	a.emit(EventDelegation, 0, fmt.Sprintf("%x", kid))
	return a.ks.SaveDelegations(rawDelegations(set))
}

// liveDelegations returns a copy of the set held without the expired ones.
// The caller holds delegMu.
func (a *Agent) liveDelegations() []*onlineKey {
	now := uint64(a.opts.Now().Unix())
	live := make([]*onlineKey, 0, len(a.online)+1)
	for _, k := range a.online {
		if now < k.notAfter {
			live = append(live, k)
		}
	}
	return live
}

// onlineKeyFor returns the held, unexpired online key named kid, or nil:
// a downlink is checked against the delegation its kid names.
func (a *Agent) onlineKeyFor(kid []byte) *onlineKey {
	a.delegMu.Lock()
	defer a.delegMu.Unlock()
	a.online = a.liveDelegations()
	for _, k := range a.online {
		if bytes.Equal(k.kid, kid) {
			return k
		}
	}
	return nil
}

// latestDelegation returns the key id of the delegation accepted last (nil
// if none): what a hello reports, so the node the device is connected to
// sends its own delegation when it is not that one.
func (a *Agent) latestDelegation() []byte {
	a.delegMu.Lock()
	defer a.delegMu.Unlock()
	a.online = a.liveDelegations()
	if len(a.online) == 0 {
		return nil
	}
	return a.online[len(a.online)-1].kid
}

// heldDelegations returns the key ids of the delegations held, oldest
// accepted first.
func (a *Agent) heldDelegations() [][]byte {
	a.delegMu.Lock()
	defer a.delegMu.Unlock()
	a.online = a.liveDelegations()
	kids := make([][]byte, len(a.online))
	for i, k := range a.online {
		kids[i] = k.kid
	}
	return kids
}

// dropDelegations forgets every delegation: the update key that certified
// them was replaced (an anchor rotation), and whatever an online key it
// certified signs is not trusted any more, however long its delegation.
func (a *Agent) dropDelegations() error {
	a.delegMu.Lock()
	defer a.delegMu.Unlock()
	a.online = nil
	return a.ks.SaveDelegations(nil)
}

func rawDelegations(set []*onlineKey) [][]byte {
	out := make([][]byte, len(set))
	for i, k := range set {
		out[i] = k.raw
	}
	return out
}
