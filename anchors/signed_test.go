package anchors

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/keyfleet/keyfleet/protocol"
)

func TestSignParseRoundTrip(t *testing.T) {
	h := fourSets(t)
	for i, s := range h.signed {
		e := h.eras[i]
		got, err := Parse(h.raw[i])
		if err != nil {
			t.Fatalf("Parse v%d: %v", i+1, err)
		}
		if !reflect.DeepEqual(got.Set, s.Set) || !bytes.Equal(got.Raw, h.raw[i]) {
			t.Fatalf("Parse v%d: got %+v, want %+v", i+1, got.Set, s.Set)
		}
		if got.Hash() != sha256.Sum256(h.raw[i]) {
			t.Errorf("v%d: Hash is not SHA-256 of Raw", i+1)
		}
		if i > 0 {
			if want := h.v(i).Hash(); !bytes.Equal(got.Prev, want[:]) {
				t.Errorf("v%d: got prev %x, want %x", i+1, got.Prev, want)
			}
		}
		keys, err := got.SigningKeys()
		if err != nil || !keys[0].Equal(&e.root.PublicKey) || !keys[1].Equal(&e.update.PublicKey) {
			t.Errorf("v%d: SigningKeys = %v, %v; want the era's root and update keys", i+1, keys, err)
		}
		fw, err := got.FirmwarePublicKey()
		if err != nil || !fw.Equal(&e.firmware.PublicKey) {
			t.Errorf("v%d: FirmwarePublicKey = %v, %v; want the era's firmware key", i+1, fw, err)
		}
		root, err := got.RootCert()
		if err != nil || !bytes.Equal(root.Raw, e.rootCert) {
			t.Errorf("v%d: RootCert = %v; want the era's root", i+1, err)
		}
	}
}

// TestGoCOSEInterop checks that go-cose's own COSE_Sign decoder and
// verifier accept what Sign produces: the layout is standard RFC 9052.
func TestGoCOSEInterop(t *testing.T) {
	h := fourSets(t)
	var msg cose.SignMessage
	if err := msg.UnmarshalCBOR(h.raw[1]); err != nil {
		t.Fatalf("go-cose decode: %v", err)
	}
	// Signatures come sorted by kid: pick each one's verifier by its kid.
	keys := map[string]*ecdsa.PrivateKey{}
	for _, k := range []*ecdsa.PrivateKey{h.eras[0].root, h.eras[0].update} {
		keys[string(kidOf(t, k))] = k
	}
	var verifiers []cose.Verifier
	for i, sig := range msg.Signatures {
		kid, _ := sig.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
		k, ok := keys[string(kid)]
		if !ok {
			t.Fatalf("signature %d: got kid %x, want one of v1's signing keys", i, kid)
		}
		delete(keys, string(kid))
		v, err := cose.NewVerifier(cose.AlgorithmES256, &k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		verifiers = append(verifiers, v)
	}
	if len(keys) != 0 {
		t.Fatalf("got %d signatures, want one by each of v1's signing keys", len(msg.Signatures))
	}
	if err := msg.Verify(externalAAD, verifiers...); err != nil {
		t.Fatalf("go-cose verify: %v", err)
	}
	if err := msg.Verify(nil, verifiers...); err == nil {
		t.Errorf("verified without the anchors external AAD, want a failure")
	}
}

func TestNext(t *testing.T) {
	e1 := newEra(t, "root")
	e2 := e1.withUpdate(t)
	h := newHistory(t, e1)
	oldID, newID := kidOf(t, e1.update), bytes.Repeat([]byte{0xff}, KeyIDSize)
	v2raw, err := Next(h.v(1), e2.set(t, newID, oldID), e1.signers()...)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := Parse(v2raw)
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]byte{oldID, newID}; !slices.EqualFunc(v2.Revoked, want, bytes.Equal) {
		t.Fatalf("v2 revoked: got %x, want %x (sorted)", v2.Revoked, want)
	}
	if !v2.IsRevoked(oldID) || v2.IsRevoked(kidOf(t, e2.update)) {
		t.Errorf("IsRevoked: got %v, %v; want true, false", v2.IsRevoked(oldID), v2.IsRevoked(kidOf(t, e2.update)))
	}
	// v3 lists no revocation itself: Next carries v2's forward.
	v3raw, err := Next(v2, e2.withUpdate(t).set(t), e2.signers()...)
	if err != nil {
		t.Fatal(err)
	}
	v3, _ := Parse(v3raw)
	if v3.Version != 3 || !slices.EqualFunc(v3.Revoked, v2.Revoked, bytes.Equal) {
		t.Fatalf("v3: got version %d, revoked %x; want 3, %x", v3.Version, v3.Revoked, v2.Revoked)
	}
	if got, err := Walk(h.v(1), [][]byte{h.raw[0], v2raw, v3raw}, WalkOptions{}); err != nil || got.Version != 3 {
		t.Fatalf("walk: got %s, %v; want v3", describe(got), err)
	}

	stranger := newKey(t)
	wrongVersion := e2.set(t)
	wrongVersion.Version = 3
	wrongPrev := e2.set(t)
	wrongPrev.Prev = bytes.Repeat([]byte{1}, sha256.Size)
	revokesOwn := e2.set(t, kidOf(t, e2.firmware))
	tests := []struct {
		name    string
		next    *Set
		signers []crypto.Signer
		wantErr error
	}{
		{"only the root key", e2.set(t), []crypto.Signer{e1.root}, ErrMissingSignature},
		{"the new keys", e2.set(t), e2.signers(), ErrUnknownKey},
		{"an extra signer", e2.set(t), []crypto.Signer{e1.root, e1.update, stranger}, ErrUnknownKey},
		{"a version that does not follow", wrongVersion, e1.signers(), ErrMalformed},
		{"a prev that is not v1's hash", wrongPrev, e1.signers(), ErrMalformed},
		{"a set revoking its own key", revokesOwn, e1.signers(), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := *tc.next
			b, err := Next(h.v(1), tc.next, tc.signers...)
			if !errors.Is(err, tc.wantErr) || b != nil {
				t.Fatalf("got %d bytes, err %v; want nil, %v", len(b), err, tc.wantErr)
			}
			if !reflect.DeepEqual(*tc.next, before) {
				t.Errorf("Next modified its argument")
			}
		})
	}
}

func TestGenesisAndTrustOnInstall(t *testing.T) {
	e := newEra(t, "root")
	other := newEra(t, "other")
	if _, err := Genesis(e.set(t), e.root); !errors.Is(err, ErrMissingSignature) {
		t.Errorf("Genesis with the root key only: got %v, want %v", err, ErrMissingSignature)
	}
	if _, err := Genesis(e.set(t), other.signers()...); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Genesis with other keys: got %v, want %v", err, ErrUnknownKey)
	}
	v2 := e.set(t)
	v2.Version = 2
	if _, err := Genesis(v2); !errors.Is(err, ErrMalformed) {
		t.Errorf("Genesis of version 2: got %v, want %v", err, ErrMalformed)
	}

	h := newHistory(t, e).extend(t, e.withUpdate(t))
	// A later version is trusted as installed: its signer is not known.
	if s, err := TrustOnInstall(h.raw[1]); err != nil || s.Version != 2 {
		t.Errorf("TrustOnInstall(v2): got %s, %v; want v2", describe(s), err)
	}
	v1 := e.set(t)
	v1.Version = 1
	tests := []struct {
		name    string
		raw     []byte
		wantErr error
	}{
		{"genesis", h.raw[0], nil},
		{"v1 signed by other keys", signRaw(t, v1, other.signers()...), ErrUnknownKey},
		{"v1 signed by its root only", signRaw(t, v1, e.root), ErrMissingSignature},
		{"v1 with a bad signature", flipSignature(t, h.raw[0]), ErrBadSignature},
		{"garbage", []byte{0xd8, 0x62}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := TrustOnInstall(tc.raw)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("got err %v, want v1", err)
			case tc.wantErr != nil && (!errors.Is(err, tc.wantErr) || s != nil):
				t.Fatalf("got %s, err %v; want nil, %v", describe(s), err, tc.wantErr)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	e := newEra(t, "root")
	ok := e.set(t)
	ok.Version = 1
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		signers []crypto.Signer
		wantErr error
	}{
		{"no signer", nil, ErrMalformed},
		{"a P-384 signer", []crypto.Signer{e.root, p384}, ErrMalformed},
		{"the same key twice", []crypto.Signer{e.root, e.root}, ErrMalformed},
		{"too many signers", []crypto.Signer{e.root, e.update, newKey(t), newKey(t), newKey(t)}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := Sign(ok, tc.signers...); !errors.Is(err, tc.wantErr) || b != nil {
				t.Fatalf("got %d bytes, err %v; want nil, %v", len(b), err, tc.wantErr)
			}
		})
	}
	for _, tc := range setCases(t) {
		if tc.wantErr == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			if b, err := Sign(tc.set, e.signers()...); !errors.Is(err, tc.wantErr) || b != nil {
				t.Fatalf("got %d bytes, err %v; want nil, %v", len(b), err, tc.wantErr)
			}
		})
	}
}

type setCase struct {
	name    string
	set     *Set
	wantErr error
	detail  string
}

// setCases are sets that break one rule of validate, starting from a valid
// version 2.
func setCases(tb testing.TB) []setCase {
	tb.Helper()
	e := fixedEra(tb, "cases")
	mk := func(f func(*Set)) *Set {
		s := e.set(tb)
		s.Version, s.Prev = 2, bytes.Repeat([]byte{7}, sha256.Size)
		f(s)
		return s
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	id := func(b byte) []byte { return bytes.Repeat([]byte{b}, KeyIDSize) }
	many := make([][]byte, MaxRevoked+1)
	for i := range many {
		many[i] = []byte{0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)}
	}
	return []setCase{
		{"valid", mk(func(*Set) {}), nil, ""},
		{"valid with revocations", mk(func(s *Set) { s.Revoked = [][]byte{id(1), id(2)} }), nil, ""},
		{"version 0", mk(func(s *Set) { s.Version = 0 }), ErrMalformed, "version 0"},
		{"no issued-at", mk(func(s *Set) { s.IssuedAt = 0 }), ErrMalformed, "issued-at"},
		{"v1 with prev", mk(func(s *Set) { s.Version = 1 }), ErrMalformed, "version 1 has a previous set"},
		{"v2 without prev", mk(func(s *Set) { s.Prev = nil }), ErrMalformed, "prev is 0 bytes"},
		{"short prev", mk(func(s *Set) { s.Prev = s.Prev[:31] }), ErrMalformed, "prev is 31 bytes"},
		{"no root", mk(func(s *Set) { s.Root = nil }), ErrMalformed, "root certificate"},
		{"root not a CA", mk(func(s *Set) { s.Root = selfSigned(tb, e.root, "leaf", false) }), ErrMalformed, "not a CA"},
		{"P-384 update key", mk(func(s *Set) { s.UpdateKey = spki(tb, &p384.PublicKey) }), ErrMalformed, "want ECDSA P-256"},
		{"garbage firmware key", mk(func(s *Set) { s.FirmwareKey = []byte{0x30, 0x00} }), ErrMalformed, "firmware key"},
		{"update key is the root key", mk(func(s *Set) { s.UpdateKey = spki(tb, &e.root.PublicKey) }), ErrMalformed, "not distinct"},
		{"firmware key is the update key", mk(func(s *Set) { s.FirmwareKey = s.UpdateKey }), ErrMalformed, "not distinct"},
		{"revoked ids unsorted", mk(func(s *Set) { s.Revoked = [][]byte{id(2), id(1)} }), ErrMalformed, "not strictly ascending"},
		{"revoked id twice", mk(func(s *Set) { s.Revoked = [][]byte{id(1), id(1)} }), ErrMalformed, "not strictly ascending"},
		{"revoked id of 7 bytes", mk(func(s *Set) { s.Revoked = [][]byte{id(1)[:7]} }), ErrMalformed, "7 bytes"},
		{"revokes its own update key", mk(func(s *Set) { s.Revoked = [][]byte{kidOf(tb, e.update)} }), ErrMalformed, "revokes its own key"},
		{"too many revoked ids", mk(func(s *Set) { s.Revoked = many }), ErrMalformed, "64"},
		{"valid with issuers", mk(func(s *Set) { s.Issuers = [][]byte{selfSigned(tb, fixedKey(tb, "issuer"), "issuer", true)} }), nil, ""},
		{"issuer not a CA", mk(func(s *Set) { s.Issuers = [][]byte{selfSigned(tb, fixedKey(tb, "issuer"), "leaf", false)} }), ErrMalformed, "issuer certificate 0 is not a CA"},
		{"garbage issuer", mk(func(s *Set) { s.Issuers = [][]byte{{0x30, 0x00}} }), ErrMalformed, "issuer certificate 0"},
		// The count is checked before any certificate is parsed.
		{"too many issuers", mk(func(s *Set) { s.Issuers = [][]byte{{1}, {2}, {3}, {4}, {5}} }), ErrMalformed, "5 issuer certificates"},
	}
}

type rawCase struct {
	name    string
	raw     []byte
	wantErr error
	detail  string
}

// rawCases are hostile encodings of a signed set, each breaking one rule of
// Parse. They are signed with real keys, so only Parse's own checks can
// refuse them.
func rawCases(tb testing.TB) []rawCase {
	tb.Helper()
	e := fixedEra(tb, "raw")
	signers := e.signers()
	base := e.set(tb)
	base.Version = 1
	good, err := Sign(base, signers...)
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := protocol.MarshalCanonical(base)
	if err != nil {
		tb.Fatal(err)
	}
	// encode a map with integer keys the way a hostile server might.
	m := func(kv ...any) []byte {
		mm := map[int]any{}
		for i := 0; i < len(kv); i += 2 {
			mm[kv[i].(int)] = kv[i+1]
		}
		b, err := protocol.MarshalCanonical(mm)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	fields := []any{1, 1, 2, base.Root, 3, base.UpdateKey, 4, base.FirmwareKey, 7, base.IssuedAt}
	sp := func(p []byte) []byte { return signBytes(tb, p, signers...) }
	env := func(f func(*rawSign)) []byte { return mutateEnvelope(tb, good, f) }
	kid := kidOf(tb, e.root)
	// The payload's byte string head is 59 LL LL (it is over 255 bytes);
	// a 4-byte length is valid CBOR but not the shortest form.
	pi := bytes.Index(good, payload)
	longHead := slices.Concat(good[:pi-3], []byte{0x5a, 0, 0}, good[pi-2:])

	var cases []rawCase
	add := func(name string, raw []byte, want error, detail string) {
		cases = append(cases, rawCase{name, raw, want, detail})
	}
	add("valid", good, nil, "")
	add("valid, built by hand", sp(m(fields...)), nil, "")
	for _, tc := range setCases(tb) {
		if tc.wantErr != nil {
			add("set: "+tc.name, sp(mustEncode(tb, tc.set)), tc.wantErr, tc.detail)
		}
	}

	// Size and framing.
	add("empty", nil, ErrMalformed, "not a tagged COSE_Sign")
	add("over MaxSetSize", append(slices.Clone(good), make([]byte, MaxSetSize)...), ErrTooLarge, "")
	add("truncated", good[:len(good)-1], ErrMalformed, "unexpected EOF")
	add("trailing byte", append(slices.Clone(good), 0), ErrMalformed, "extraneous data")
	add("untagged", good[2:], ErrMalformed, "not a tagged COSE_Sign")
	add("COSE_Sign1 tag", append([]byte{0xd2}, good[2:]...), ErrMalformed, "not a tagged COSE_Sign")
	add("non-shortest length", longHead, ErrMalformed, "core deterministic")

	// Envelope.
	add("body protected header", env(func(r *rawSign) { r.Protected = []byte{0x43, 0xa1, 0x01, 0x26} }), ErrMalformed, "body headers")
	add("body unprotected header", env(func(r *rawSign) { r.Unprotected = []byte{0xa1, 0x04, 0x41, 0x00} }), ErrMalformed, "body headers")
	add("detached payload", env(func(r *rawSign) { r.Payload = nil }), ErrMalformed, "detached payload")
	add("no signature", env(func(r *rawSign) { r.Signatures = nil }), ErrMalformed, "0 signatures")
	add("five signatures", env(func(r *rawSign) {
		for i := range 3 {
			s := r.Signatures[0]
			s.Protected = sigHeader([]byte{1, 2, 3, 4, 5, 6, 7, byte(i)})
			r.Signatures = append(r.Signatures, s)
		}
	}), ErrMalformed, "5 signatures")
	add("two signatures by one key", env(func(r *rawSign) { r.Signatures[1] = r.Signatures[0] }), ErrMalformed, "strictly ascending kid order")
	add("signatures out of kid order", env(func(r *rawSign) { r.Signatures[0], r.Signatures[1] = r.Signatures[1], r.Signatures[0] }), ErrMalformed, "strictly ascending kid order")
	add("high-S signature", env(func(r *rawSign) {
		sig := r.Signatures[0].Signature
		n := elliptic.P256().Params().N
		new(big.Int).Sub(n, new(big.Int).SetBytes(sig[32:])).FillBytes(sig[32:])
	}), ErrMalformed, "low-S")
	add("signature header with a content type", env(func(r *rawSign) {
		r.Signatures[0].Protected = slices.Concat([]byte{0x4f, 0xa3, 0x01, 0x26, 0x03, 0x00, 0x04, 0x48}, kid)
	}), ErrMalformed, "protected header must be exactly")
	add("signature with another algorithm", env(func(r *rawSign) {
		r.Signatures[0].Protected = slices.Concat([]byte{0x4e, 0xa2, 0x01, 0x38, 0x22, 0x04, 0x48}, kid) // ES384
	}), ErrMalformed, "protected header must be exactly")
	add("kid of 7 bytes", env(func(r *rawSign) {
		r.Signatures[0].Protected = slices.Concat([]byte{0x4c, 0xa2, 0x01, 0x26, 0x04, 0x47}, kid[:7])
	}), ErrMalformed, "protected header must be exactly")
	add("kid in the unprotected header", env(func(r *rawSign) {
		r.Signatures[0].Unprotected = slices.Concat([]byte{0xa1, 0x04, 0x48}, kid)
	}), ErrMalformed, "unprotected header must be empty")
	add("signature of 63 bytes", env(func(r *rawSign) { r.Signatures[0].Signature = r.Signatures[0].Signature[:63] }), ErrMalformed, "63 bytes")
	add("COSE array of 3", slices.Concat(coseSignPrefix, []byte{0x83, 0x40, 0xa0, 0x40}), ErrMalformed, "cose")
	add("tag inside the envelope", env(func(r *rawSign) { r.Unprotected = []byte{0xd8, 0x40, 0xa0} }), ErrMalformed, "tag")

	// Payload CBOR.
	add("payload not a map", sp([]byte{0x81, 0x01}), ErrMalformed, "set")
	add("duplicate map key", sp(append(append([]byte{0xa6}, m(fields...)[1:]...), 0x01, 0x01)), ErrMalformed, "duplicate map key")
	add("indefinite-length map", sp(append(append([]byte{0xbf}, m(fields...)[1:]...), 0xff)), ErrMalformed, "indefinite-length map")
	add("tag inside payload", sp(m(slices.Concat(fields[:2], []any{2, cbor.Tag{Number: 24, Content: base.Root}}, fields[4:])...)), ErrMalformed, "tag")
	add("unknown field", sp(m(append(slices.Clone(fields), 9, 0)...)), ErrMalformed, "unknown field")
	add("empty issuer list", sp(m(append(slices.Clone(fields), 8, [][]byte{})...)), ErrMalformed, "core deterministic")
	add("text where bytes belong", sp(m(slices.Concat(fields[:6], []any{4, "key"}, fields[8:])...)), ErrMalformed, "set")
	add("negative version", sp(m(slices.Concat([]any{1, -1}, fields[2:])...)), ErrMalformed, "set")
	add("version over 32 bits", sp(m(slices.Concat([]any{1, uint64(1) << 32}, fields[2:])...)), ErrMalformed, "overflows")
	add("empty revocation list", sp(m(append(slices.Clone(fields), 5, [][]byte{})...)), ErrMalformed, "core deterministic")
	add("empty prev on v1", sp(m(append(slices.Clone(fields), 6, []byte{})...)), ErrMalformed, "core deterministic")
	add("non-shortest integer", sp(bytes.Replace(payload, []byte{0x01, 0x01}, []byte{0x01, 0x18, 0x01}, 1)), ErrMalformed, "core deterministic")
	add("nesting too deep", sp(m(append(slices.Clone(fields), 5, []any{[]any{[]any{[]any{[]any{[]any{[]any{[]any{1}}}}}}}})...)), ErrMalformed, "nested level")
	return cases
}

func mustEncode(tb testing.TB, s *Set) []byte {
	tb.Helper()
	b, err := protocol.MarshalCanonical(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestParse(t *testing.T) {
	for _, tc := range rawCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(tc.raw)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("got err %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || s != nil {
				t.Fatalf("got %s, err %v; want nil, %v", describe(s), err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("got err %q, want it to contain %q", err, tc.detail)
			}
			t.Logf("refused: %v", err)
			if !isSentinel(err) {
				t.Fatalf("error %v wraps none of the sentinels", err)
			}
		})
	}
}
