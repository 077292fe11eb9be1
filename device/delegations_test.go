package device

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// These tests drive a real Agent's delegation handling with online keys
// the test holds, as several fleetd nodes (or several fleetd starts) would
// each certify their own under the one update key.

// onlineNode is one server's online key.
type onlineNode struct {
	key *ecdsa.PrivateKey
	kid []byte
}

func newOnlineNode(t *testing.T) onlineNode {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return onlineNode{key: k, kid: mustKID(t, &k.PublicKey)}
}

// delegate seals a delegation of n's key by signer, valid from now-1m to
// now+life.
func (n onlineNode) delegate(t *testing.T, signer *ecdsa.PrivateKey, now time.Time, life time.Duration) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(&n.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	d := protocol.Stamp(&protocol.Delegation{Key: spki, NotBefore: uint64(now.Add(-time.Minute).Unix()),
		NotAfter: uint64(now.Add(life).Unix())}, now, 0)
	b, err := protocol.NewCodec().Seal(d, signer, "")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// downlink seals a harmless downlink (a server error report) for dev-1
// with n's key.
func (n onlineNode) downlink(t *testing.T, now time.Time) []byte {
	t.Helper()
	b, err := protocol.NewCodec().Seal(protocol.Stamp(&protocol.Error{Code: 1, Detail: "test"}, now, 0), n.key, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgentDelegations: an agent holds the delegation of every online key
// the update key certifies, up to MaxDelegations, checks each downlink
// against the one its kid names, keeps them across restarts, and drops
// the expired ones and those of a replaced update key.
func TestAgentDelegations(t *testing.T) {
	type env struct {
		t     *testing.T
		c     *chainFixture
		a     *Agent
		st    Storage
		now   time.Time
		nodes []onlineNode
	}
	// accepts delivers payload and fails on any rejection.
	accepts := func(e *env, payload []byte) {
		e.t.Helper()
		if r := deliver(e.t, e.a, payload); len(r) != 0 {
			e.t.Fatalf("rejected: %v", r)
		}
	}
	refuses := func(e *env, payload []byte, want string) {
		e.t.Helper()
		e.a.lastSync = e.now // no hello to ask for it: there is no connection
		if r := deliver(e.t, e.a, payload); !slices.Equal(r, []string{want}) {
			e.t.Fatalf("rejections %v, want [%s]", r, want)
		}
		if want == "unknown-signer" && !e.a.missed {
			e.t.Fatal("unknown signer not noted: the delegation's arrival would not ask for the step again")
		}
		e.a.missed = false // its hello would need a connection
	}
	held := func(e *env, want ...int) {
		e.t.Helper()
		var kids [][]byte
		for _, i := range want {
			kids = append(kids, e.nodes[i].kid)
		}
		if got := e.a.heldDelegations(); !slices.EqualFunc(got, kids, bytes.Equal) {
			e.t.Fatalf("held %x, want %x (nodes %v)", got, kids, want)
		}
	}
	// restart opens a new agent on the same keystore, as a reboot would.
	restart := func(e *env) {
		e.t.Helper()
		a, err := New(Options{Storage: e.st, Now: func() time.Time { return e.now }})
		if err != nil {
			e.t.Fatal(err)
		}
		e.a = a
	}
	upd := func(e *env) *ecdsa.PrivateKey { return e.c.keys[0].update }

	for _, tc := range []struct {
		name string
		run  func(e *env)
	}{
		{"two nodes' delegations both verify, across a restart", func(e *env) {
			accepts(e, e.nodes[0].delegate(e.t, upd(e), e.now, 2*time.Hour))
			accepts(e, e.nodes[1].delegate(e.t, upd(e), e.now, time.Hour)) // shorter: still taken
			for _, n := range e.nodes[:2] {
				accepts(e, n.downlink(e.t, e.now))
			}
			if got := e.a.latestDelegation(); !bytes.Equal(got, e.nodes[1].kid) {
				e.t.Fatalf("hello reports %x, want the last accepted %x", got, e.nodes[1].kid)
			}
			restart(e)
			held(e, 0, 1)
			for _, n := range e.nodes[:2] {
				accepts(e, n.downlink(e.t, e.now))
			}
			refuses(e, e.nodes[2].downlink(e.t, e.now), "unknown-signer")
		}},
		{"a replayed older delegation changes nothing", func(e *env) {
			old := e.nodes[0].delegate(e.t, upd(e), e.now.Add(-time.Minute), time.Hour)
			accepts(e, e.nodes[0].delegate(e.t, upd(e), e.now, 2*time.Hour))
			accepts(e, e.nodes[1].delegate(e.t, upd(e), e.now, 2*time.Hour))
			accepts(e, old)
			held(e, 0, 1)
			if got := e.a.latestDelegation(); !bytes.Equal(got, e.nodes[1].kid) {
				e.t.Fatalf("hello reports %x, want %x", got, e.nodes[1].kid)
			}
		}},
		{"an expired delegation is pruned", func(e *env) {
			accepts(e, e.nodes[0].delegate(e.t, upd(e), e.now, 10*time.Minute))
			accepts(e, e.nodes[1].delegate(e.t, upd(e), e.now, time.Hour))
			e.now = e.now.Add(11 * time.Minute)
			refuses(e, e.nodes[0].downlink(e.t, e.now), "unknown-signer")
			accepts(e, e.nodes[1].downlink(e.t, e.now))
			held(e, 1)
			accepts(e, e.nodes[2].delegate(e.t, upd(e), e.now, time.Hour))
			restart(e)
			held(e, 1, 2)
			if n := len(e.a.ks.Delegations()); n != 2 {
				e.t.Fatalf("keystore holds %d delegations, want 2", n)
			}
		}},
		{"a delegation signed by another key is refused", func(e *env) {
			rogue, _ := NewKey()
			d := e.nodes[0].delegate(e.t, rogue, e.now, time.Hour)
			if err := e.a.acceptDelegation(d, true); err == nil {
				e.t.Fatal("delegation by a non-update key accepted")
			}
			refuses(e, d, "unknown-signer")
			refuses(e, e.nodes[0].downlink(e.t, e.now), "unknown-signer")
			held(e)
			if ds := e.a.ks.Delegations(); ds != nil {
				e.t.Fatalf("keystore holds %d delegations, want none", len(ds))
			}
		}},
		{"the bound holds: the soonest-expiring go", func(e *env) {
			// Node i's delegation lasts (i+1) hours, except node 3's, the
			// longest: nodes 0, 1 and 2 expire first.
			for i := range e.nodes {
				life := time.Duration(i+1) * time.Hour
				if i == 3 {
					life = 100 * time.Hour
				}
				accepts(e, e.nodes[i].delegate(e.t, upd(e), e.now, life))
			}
			held(e, 3, 4, 5, 6, 7, 8, 9, 10)
			if n := len(e.a.ks.Delegations()); n != MaxDelegations {
				e.t.Fatalf("keystore holds %d delegations, want %d", n, MaxDelegations)
			}
			// One that would expire before all held is not taken.
			accepts(e, e.nodes[0].delegate(e.t, upd(e), e.now, 30*time.Minute))
			held(e, 3, 4, 5, 6, 7, 8, 9, 10)
			refuses(e, e.nodes[0].downlink(e.t, e.now), "unknown-signer")
		}},
		{"an anchor rotation drops the old update key's delegations", func(e *env) {
			accepts(e, e.nodes[0].delegate(e.t, upd(e), e.now, time.Hour))
			accepts(e, anchorsMsg(e.t, e.c.raw[1]))
			if got := e.a.AnchorVersion(); got != 2 {
				e.t.Fatalf("anchors v%d, want v2", got)
			}
			held(e)
			refuses(e, e.nodes[0].downlink(e.t, e.now), "unknown-signer")
			if err := e.a.acceptDelegation(e.nodes[1].delegate(e.t, upd(e), e.now, time.Hour), true); err == nil {
				e.t.Fatal("delegation by the replaced update key accepted")
			}
			accepts(e, e.nodes[1].delegate(e.t, e.c.keys[1].update, e.now, time.Hour))
			restart(e)
			held(e, 1)
		}},
		{"an older agent's single delegation is adopted", func(e *env) {
			if err := e.st.WriteFile(fileDelegLegacy, e.nodes[0].delegate(e.t, upd(e), e.now, time.Hour), 0o644); err != nil {
				e.t.Fatal(err)
			}
			restart(e)
			held(e, 0)
			accepts(e, e.nodes[1].delegate(e.t, upd(e), e.now, time.Hour))
			if _, err := e.st.ReadFile(fileDelegLegacy); err == nil {
				e.t.Fatal("old delegation file left behind")
			}
			restart(e)
			held(e, 0, 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChain(t, 2)
			e := &env{t: t, c: c, now: time.Now()}
			e.a, e.st = newAnchoredAgent(t, c, 1, nil)
			e.a.opts.Now = func() time.Time { return e.now }
			for range MaxDelegations + 3 {
				e.nodes = append(e.nodes, newOnlineNode(t))
			}
			tc.run(e)
		})
	}
}
