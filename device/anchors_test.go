package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
)

// These tests drive a real Agent's downlink handling (decode, verify,
// walk, install) with messages built from software keys: the anchors and
// firmware paths need no broker, and hostile input is easiest to forge
// with keys the test holds. The anchor chain fixtures here serve
// firmware_test.go too. The end-to-end paths through fleetd and the broker
// are in e2e.

// anchorKeys are the private keys of one anchor set.
type anchorKeys struct {
	root     *ecdsa.PrivateKey
	rootCert *x509.Certificate
	update   *ecdsa.PrivateKey
	firmware *ecdsa.PrivateKey
}

func newAnchorKeys(t *testing.T, v int) anchorKeys {
	t.Helper()
	k := anchorKeys{}
	k.root, _ = NewKey()
	k.update, _ = NewKey()
	k.firmware, _ = NewKey()
	var err error
	if k.rootCert, err = certs.NewRoot(k.root, fmt.Sprintf("test CA %d", v), time.Now(), 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k anchorKeys) set(t *testing.T) *anchors.Set {
	t.Helper()
	upd, err := x509.MarshalPKIXPublicKey(&k.update.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := x509.MarshalPKIXPublicKey(&k.firmware.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &anchors.Set{Root: k.rootCert.Raw, UpdateKey: upd, FirmwareKey: fw, IssuedAt: uint64(time.Now().Unix())}
}

// deviceCredential issues dev-1 an identity under the set's root and
// returns its key, its certificate and the set's update key as PEM.
func (k anchorKeys) deviceCredential(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	ca, err := certs.NewCA(k.rootCert, k.root, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	cert, err := ca.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: &key.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	updPEM, err := publicPEM(&k.update.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, updPEM
}

// chainFixture is a legitimate chain v1..v4 and the keys of every set.
type chainFixture struct {
	keys []anchorKeys // keys[i] belong to version i+1
	raw  [][]byte     // raw[i] is version i+1
}

func newChain(t *testing.T, n int) *chainFixture {
	t.Helper()
	c := &chainFixture{}
	for v := 1; v <= n; v++ {
		k := newAnchorKeys(t, v)
		var raw []byte
		var err error
		if v == 1 {
			raw, err = anchors.Genesis(k.set(t), k.root, k.update)
		} else {
			prev, perr := anchors.Parse(c.raw[v-2])
			if perr != nil {
				t.Fatal(perr)
			}
			pk := c.keys[v-2]
			s := k.set(t)
			kid, _ := protocol.KeyID(&pk.update.PublicKey)
			s.Revoked = [][]byte{kid} // each rotation revokes the update key it replaces
			raw, err = anchors.Next(prev, s, pk.root, pk.update)
		}
		if err != nil {
			t.Fatalf("set v%d: %v", v, err)
		}
		c.keys, c.raw = append(c.keys, k), append(c.raw, raw)
	}
	return c
}

// newAnchoredAgent installs a device holding anchor set installed (1-based)
// of c and returns its agent; fw turns on firmware updates with the given
// boot check.
func newAnchoredAgent(t *testing.T, c *chainFixture, installed int, fw *FirmwareOptions) (*Agent, Storage) {
	t.Helper()
	k := c.keys[installed-1]
	key, cert, updPEM := k.deviceCredential(t)
	st := NewMemStorage()
	if err := InstallBundle(st, Bundle{Identity: Identity{ID: "dev-1", Broker: "127.0.0.1:1"}, Key: key,
		CertPEM: identity.EncodePEM(cert), CAPEM: identity.EncodePEM(k.rootCert), UpdatePEM: updPEM, Anchors: c.raw[installed-1]}); err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Storage: st, Firmware: fw})
	if err != nil {
		t.Fatal(err)
	}
	return a, st
}

func anchorsMsg(t *testing.T, sets ...[]byte) []byte {
	t.Helper()
	m := protocol.Stamp(&protocol.Anchors{Sets: sets}, time.Now(), 0)
	m.IAT = 0
	b, err := protocol.NewCodec().Bare(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deliver hands a downlink to the agent as if the broker had, and returns
// the reasons of the downlinks it rejected.
func deliver(t *testing.T, a *Agent, payload []byte) []string {
	t.Helper()
	var rejected []string
	prev := a.opts.OnEvent
	a.opts.OnEvent = func(e Event) {
		if e.Kind == EventRejected {
			rejected = append(rejected, e.Detail)
		}
	}
	defer func() { a.opts.OnEvent = prev }()
	if err := a.handle(context.Background(), "kf/d/dev-1/down", payload); err != nil {
		t.Fatalf("handle: %v", err)
	}
	return rejected
}

// TestAgentRejectsHostileAnchors: each hostile chain is refused by the
// agent, which keeps the anchors it has, in memory and on disk.
func TestAgentRejectsHostileAnchors(t *testing.T) {
	c := newChain(t, 4)
	// A fork: a set 3 validly signed by set 2's keys but claiming another
	// history (Prev of a set 2 the device never saw).
	fork := func(t *testing.T) []byte {
		k := newAnchorKeys(t, 3)
		s := k.set(t)
		s.Version = 3
		s.Prev = bytes.Repeat([]byte{7}, 32)
		s.Revoked = sortedIDs(mustKID(t, &c.keys[0].update.PublicKey), mustKID(t, &c.keys[1].update.PublicKey))
		raw, err := anchors.Sign(s, c.keys[1].root, c.keys[1].update)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	// A set 3 signed with set 2's root and with set 1's update key, which
	// set 2 revoked.
	revoked := func(t *testing.T) []byte {
		k := newAnchorKeys(t, 3)
		s := k.set(t)
		s.Version = 3
		h := sha256.Sum256(c.raw[1])
		s.Prev = h[:]
		s.Revoked = sortedIDs(mustKID(t, &c.keys[0].update.PublicKey), mustKID(t, &c.keys[1].update.PublicKey))
		raw, err := anchors.Sign(s, c.keys[1].root, c.keys[0].update)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	tests := []struct {
		name      string
		installed int
		steps     int // the agent's bound; 0: the default
		sets      func(t *testing.T) [][]byte
		want      error
	}{
		{"skipped version", 1, 0, func(*testing.T) [][]byte { return [][]byte{c.raw[2], c.raw[3]} }, anchors.ErrSkip},
		{"forked set", 2, 0, func(t *testing.T) [][]byte { return [][]byte{fork(t)} }, anchors.ErrFork},
		{"set signed by a revoked key", 2, 0, func(t *testing.T) [][]byte { return [][]byte{revoked(t)} }, anchors.ErrRevokedKey},
		{"older set replayed", 3, 0, func(*testing.T) [][]byte { return [][]byte{c.raw[0], c.raw[1]} }, anchors.ErrRollback},
		{"endless chain beyond the bound", 1, 2, func(*testing.T) [][]byte { return [][]byte{c.raw[1], c.raw[2], c.raw[3]} }, anchors.ErrTooLong},
		{"set signed by an unknown key", 1, 0, func(t *testing.T) [][]byte {
			s := c.keys[1].set(t)
			s.Version = 2
			h := sha256.Sum256(c.raw[0])
			s.Prev = h[:]
			raw, err := anchors.Sign(s, c.keys[1].root, c.keys[1].update) // its own keys, not set 1's
			if err != nil {
				t.Fatal(err)
			}
			return [][]byte{raw}
		}, anchors.ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, st := newAnchoredAgent(t, c, tt.installed, nil)
			if tt.steps > 0 {
				a.opts.AnchorSteps = tt.steps
			}
			before, _ := st.ReadFile(fileAnchors)
			rootsBefore := a.ks.Roots()
			sets := tt.sets(t)
			// The walk itself names the fault...
			cur := a.anchors.Load()
			if _, err := anchors.Walk(cur, sets, anchors.WalkOptions{MaxSteps: a.opts.AnchorSteps}); !errors.Is(err, tt.want) {
				t.Fatalf("Walk: got %v, want %v", err, tt.want)
			}
			// ...and the agent refuses the message and keeps its anchors.
			if got := deliver(t, a, anchorsMsg(t, sets...)); len(got) != 1 || got[0] != "anchors" {
				t.Errorf("rejections: got %v, want [anchors]", got)
			}
			if got := a.AnchorVersion(); got != uint32(tt.installed) {
				t.Errorf("anchor version after the hostile chain: got %d, want %d", got, tt.installed)
			}
			after, _ := st.ReadFile(fileAnchors)
			if !bytes.Equal(before, after) {
				t.Error("stored anchors changed")
			}
			if a.ks.Roots() != rootsBefore {
				t.Error("root pool changed")
			}
			// A restarted agent still trusts the same set.
			b, err := New(Options{Storage: st})
			if err != nil {
				t.Fatal(err)
			}
			if got := b.AnchorVersion(); got != uint32(tt.installed) {
				t.Errorf("after restart: anchor version %d, want %d", got, tt.installed)
			}
		})
	}

	t.Run("the genuine chain walks", func(t *testing.T) {
		a, st := newAnchoredAgent(t, c, 1, nil)
		if got := deliver(t, a, anchorsMsg(t, c.raw[1], c.raw[2], c.raw[3])); len(got) != 0 {
			t.Fatalf("rejections: %v", got)
		}
		if got := a.AnchorVersion(); got != 4 {
			t.Fatalf("anchor version: got %d, want 4", got)
		}
		// The new root and update key are in force, and survive a restart.
		if _, err := c.keys[3].rootCert.Verify(x509.VerifyOptions{Roots: a.ks.Roots()}); err != nil {
			t.Errorf("new root not trusted: %v", err)
		}
		b, err := New(Options{Storage: st})
		if err != nil {
			t.Fatal(err)
		}
		if b.AnchorVersion() != 4 || !bytes.Equal(*b.updateKID.Load(), mustKID(t, &c.keys[3].update.PublicKey)) {
			t.Errorf("after restart: version %d, update key %x", b.AnchorVersion(), *b.updateKID.Load())
		}
	})
}

// TestLegacyKeystoreAdoptsAnchors: a keystore installed before anchor
// chains (a CA and an update key, no set) takes version 1 when it names
// exactly those, walks on from it, and refuses a version 1 that names
// others.
func TestLegacyKeystoreAdoptsAnchors(t *testing.T) {
	c := newChain(t, 3)
	install := func(t *testing.T, k anchorKeys) *Agent {
		key, cert, updPEM := k.deviceCredential(t)
		st := NewMemStorage()
		if err := InstallTo(st, Identity{ID: "dev-1", Broker: "127.0.0.1:1"}, key, identity.EncodePEM(cert), identity.EncodePEM(k.rootCert), updPEM); err != nil {
			t.Fatal(err)
		}
		a, err := New(Options{Storage: st})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	t.Run("matching version 1", func(t *testing.T) {
		a := install(t, c.keys[0])
		if got := deliver(t, a, anchorsMsg(t, c.raw...)); len(got) != 0 {
			t.Fatalf("rejections: %v", got)
		}
		if got := a.AnchorVersion(); got != 3 {
			t.Errorf("anchor version %d, want 3", got)
		}
	})
	t.Run("version 1 of another fleet", func(t *testing.T) {
		a := install(t, newAnchorKeys(t, 1))
		if got := deliver(t, a, anchorsMsg(t, c.raw...)); len(got) != 1 || got[0] != "anchors" {
			t.Errorf("rejections: %v, want [anchors]", got)
		}
		if got := a.AnchorVersion(); got != 0 {
			t.Errorf("anchor version %d, want 0", got)
		}
	})
}

func mustKID(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	kid, err := protocol.KeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

func publicPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pemBlock("PUBLIC KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// sortedIDs lists key ids in the ascending order a set requires.
func sortedIDs(ids ...[]byte) [][]byte {
	slices.SortFunc(ids, bytes.Compare)
	return ids
}
