package anchors

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
)

func TestWalk(t *testing.T) {
	h := fourSets(t)
	e1, e2, e3 := h.eras[0], h.eras[1], h.eras[2]
	stranger := newEra(t, "attacker root")

	// A longer genuine history for the bound.
	long := newHistory(t, newEra(t, "long root"))
	for range DefaultMaxSteps + 1 {
		long.extend(t, long.eras[len(long.eras)-1].withUpdate(t))
	}
	// The same length with broken signatures: the bound must fire before
	// any signature is looked at.
	var brokenLong [][]byte
	for _, b := range long.raw {
		brokenLong = append(brokenLong, flipSignature(t, b))
	}

	// v2' is a second, validly signed v2: a fork right after genesis.
	v2fork, err := Next(h.v(1), e1.withUpdate(t).set(t), e1.signers()...)
	if err != nil {
		t.Fatal(err)
	}
	// v3' is validly signed by v2's keys, follows v2 and names v3's keys,
	// but differs from the real v3 (issued later): v4 follows the real one.
	s3 := e3.set(t)
	s3.IssuedAt++
	v3fork, err := Next(h.v(2), s3, e2.signers()...)
	if err != nil {
		t.Fatal(err)
	}
	// v1' is another genesis.
	v1fork, err := Genesis(e1.set(t), e1.signers()...)
	if err != nil {
		t.Fatal(err)
	}
	// v3 signed by v2's keys but naming v1 as its predecessor.
	badPrev := after(t, h.v(2), e3)
	h1 := h.v(1).Hash()
	badPrev.Prev = h1[:]
	v3badPrev := signRaw(t, badPrev, e2.signers()...)

	// Revocation: r2 replaces and revokes v1's update key; an attacker who
	// kept that key signs a v3 with it.
	r := newHistory(t, e1).extend(t, e2, kidOf(t, e1.update))
	evil := after(t, r.v(2), stranger)
	rOnlyRevoked := signRaw(t, evil, e1.update)
	rRootAndRevoked := signRaw(t, evil, e2.root, e1.update) // an insider with the root key
	rRevokedGarbled := flipSignatureOf(t, signRaw(t, evil, e1.update, e2.root), kidOf(t, e1.update))
	rDropped := func() []byte { // validly signed, but forgets the revocation
		s := after(t, r.v(2), e3)
		s.Revoked = nil
		return signRaw(t, s, e2.signers()...)
	}()

	sign2 := func(signers ...crypto.Signer) []byte { return signRaw(t, after(t, h.v(1), e2), signers...) }
	truncated := h.raw[1][:len(h.raw[1])/2]

	tests := []struct {
		name    string
		current *Signed
		chain   [][]byte
		opts    WalkOptions
		want    *Signed // on success
		wantErr error
	}{
		{name: "v1 to v4", current: h.v(1), chain: h.chain(1, 4), want: h.v(4)},
		{name: "v3 to v4", current: h.v(3), chain: h.chain(1, 4), want: h.v(4)},
		{name: "v2 to v4, chain without history", current: h.v(2), chain: h.chain(3, 4), want: h.v(4)},
		{name: "v1 to v2", current: h.v(1), chain: h.chain(1, 2), want: h.v(2)},
		{name: "up to date", current: h.v(4), chain: h.chain(1, 4), want: h.v(4)},
		{name: "up to date, only the current set", current: h.v(2), chain: h.chain(2, 2), want: h.v(2)},
		{name: "revocation carried over and honoured", current: r.v(1), chain: r.chain(1, 2), want: r.v(2)},
		{name: "within MaxSteps", current: h.v(1), chain: h.chain(1, 4), opts: WalkOptions{MaxSteps: 3}, want: h.v(4)},

		{name: "no current", current: nil, chain: h.chain(1, 4), wantErr: ErrNoCurrent},
		{name: "empty chain", current: h.v(1), chain: nil, wantErr: ErrMalformed},
		{name: "skipped version", current: h.v(1), chain: [][]byte{h.raw[0], h.raw[1], h.raw[3]}, wantErr: ErrSkip},
		{name: "chain starts past current+1", current: h.v(1), chain: h.chain(3, 4), wantErr: ErrSkip},
		{name: "newer sets out of order", current: h.v(1), chain: [][]byte{h.raw[0], h.raw[2], h.raw[1]}, wantErr: ErrSkip},
		{name: "fork: prev does not name the predecessor", current: h.v(1), chain: [][]byte{h.raw[0], h.raw[1], v3badPrev}, wantErr: ErrFork},
		{name: "fork: two sets at the same version", current: h.v(1), chain: append(h.chain(1, 3), v3fork), wantErr: ErrFork},
		{name: "fork: walked into the other branch", current: h.v(2), chain: [][]byte{h.raw[1], v3fork, h.raw[3]}, wantErr: ErrFork},
		{name: "fork: chain's copy of v1 differs", current: h.v(1), chain: [][]byte{v1fork, h.raw[1]}, wantErr: ErrFork},
		{name: "fork: chain's copy of current differs", current: h.v(2), chain: [][]byte{h.raw[0], v2fork, h.raw[2]}, wantErr: ErrFork},
		{name: "revoked key from v1", current: r.v(1), chain: [][]byte{r.raw[0], r.raw[1], rOnlyRevoked}, wantErr: ErrRevokedKey},
		{name: "revoked key from v2", current: r.v(2), chain: [][]byte{rOnlyRevoked}, wantErr: ErrRevokedKey},
		{name: "revoked key next to a valid root signature", current: r.v(2), chain: [][]byte{rRootAndRevoked}, wantErr: ErrRevokedKey},
		{name: "revoked key checked before its signature", current: r.v(2), chain: [][]byte{rRevokedGarbled}, wantErr: ErrRevokedKey},
		{name: "revocation dropped", current: r.v(2), chain: [][]byte{rDropped}, wantErr: ErrRevocationDropped},
		{name: "rollback: all older", current: h.v(4), chain: h.chain(1, 3), wantErr: ErrRollback},
		{name: "rollback: one older set", current: h.v(3), chain: h.chain(2, 2), wantErr: ErrRollback},
		{name: "endless chain", current: long.v(1), chain: long.raw, wantErr: ErrTooLong},
		{name: "endless chain, bound before signatures", current: long.v(1), chain: brokenLong[1:], wantErr: ErrTooLong},
		{name: "beyond MaxSteps", current: h.v(1), chain: h.chain(1, 4), opts: WalkOptions{MaxSteps: 2}, wantErr: ErrTooLong},
		{name: "missing update signature", current: h.v(1), chain: [][]byte{sign2(e1.root)}, wantErr: ErrMissingSignature},
		{name: "missing root signature", current: h.v(1), chain: [][]byte{sign2(e1.update)}, wantErr: ErrMissingSignature},
		{name: "extra signature by an unknown key", current: h.v(1), chain: [][]byte{sign2(e1.root, e1.update, stranger.update)}, wantErr: ErrUnknownKey},
		{name: "unknown key instead of update key", current: h.v(1), chain: [][]byte{sign2(e1.root, stranger.update)}, wantErr: ErrUnknownKey},
		{name: "signed by its own keys", current: h.v(1), chain: [][]byte{sign2(e2.signers()...)}, wantErr: ErrUnknownKey},
		{name: "bad signature", current: h.v(1), chain: [][]byte{flipSignature(t, h.raw[1])}, wantErr: ErrBadSignature},
		{name: "signature over other bytes", current: h.v(1), chain: [][]byte{swapPayload(t, h.raw[1], v2fork)}, wantErr: ErrBadSignature},
		{name: "truncated entry", current: h.v(1), chain: [][]byte{h.raw[0], truncated}, wantErr: ErrMalformed},
		{name: "garbage entry", current: h.v(1), chain: [][]byte{[]byte("not an anchor set")}, wantErr: ErrMalformed},
		{name: "garbage older entry", current: h.v(3), chain: [][]byte{{0xd8, 0x62, 0x84}, h.raw[2], h.raw[3]}, wantErr: ErrMalformed},
		{name: "duplicate entry", current: h.v(1), chain: [][]byte{h.raw[0], h.raw[1], h.raw[1]}, wantErr: ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before snapshot
			if tc.current != nil {
				before = snap(tc.current)
			}
			chain := slices.Clone(tc.chain)
			got, err := Walk(tc.current, tc.chain, tc.opts)
			if tc.current != nil {
				before.check(t, tc.current)
			}
			if !slices.EqualFunc(chain, tc.chain, bytes.Equal) {
				t.Errorf("Walk changed its chain argument")
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || got != nil {
					t.Fatalf("got %s, err %v; want nil, %v", describe(got), err, tc.wantErr)
				}
				if !isSentinel(err) {
					t.Fatalf("error %v wraps none of the sentinels", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("got err %v, want v%d", err, tc.want.Version)
			}
			if got.Version != tc.want.Version || !bytes.Equal(got.Raw, tc.want.Raw) {
				t.Fatalf("got v%d %x, want v%d %x", got.Version, got.Hash(), tc.want.Version, tc.want.Hash())
			}
		})
	}
}

func TestWalkUpToDateReturnsCurrent(t *testing.T) {
	h := fourSets(t)
	got, err := Walk(h.v(4), h.chain(1, 4), WalkOptions{})
	if err != nil || got != h.v(4) {
		t.Fatalf("got %p, %v; want the current set %p, nil", got, err, h.v(4))
	}
}

// TestWalkStepwise walks one set at a time, as a device that receives each
// rotation as it happens, and lands where one long walk lands.
func TestWalkStepwise(t *testing.T) {
	h := fourSets(t)
	cur := h.v(1)
	for v := 2; v <= 4; v++ {
		next, err := Walk(cur, h.chain(v-1, v), WalkOptions{})
		if err != nil {
			t.Fatalf("walk to v%d: %v", v, err)
		}
		cur = next
	}
	if !bytes.Equal(cur.Raw, h.raw[3]) {
		t.Fatalf("got v%d, want v4", cur.Version)
	}
}

// flipSignature garbles the last signature of a signed set, keeping its
// shape.
func flipSignature(t *testing.T, b []byte) []byte {
	t.Helper()
	return mutateEnvelope(t, b, func(env *rawSign) {
		s := env.Signatures[len(env.Signatures)-1].Signature
		s[len(s)-1] ^= 1
	})
}

// flipSignatureOf garbles the signature by kid.
func flipSignatureOf(t *testing.T, b, kid []byte) []byte {
	t.Helper()
	found := false
	out := mutateEnvelope(t, b, func(env *rawSign) {
		for _, s := range env.Signatures {
			if bytes.HasSuffix(s.Protected, kid) {
				s.Signature[0] ^= 1
				found = true
			}
		}
	})
	if !found {
		t.Fatalf("no signature by %x", kid)
	}
	return out
}

// swapPayload puts the payload of other under b's signatures.
func swapPayload(t *testing.T, b, other []byte) []byte {
	t.Helper()
	var o rawSign
	if err := protocol.UnmarshalStrict(other[len(coseSignPrefix):], &o); err != nil {
		t.Fatal(err)
	}
	return mutateEnvelope(t, b, func(env *rawSign) { env.Payload = o.Payload })
}

func describe(s *Signed) string {
	if s == nil {
		return "nil"
	}
	return fmt.Sprintf("v%d %x", s.Version, s.Hash())
}
