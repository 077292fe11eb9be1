package firmware

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/veraison/go-cose"

	"github.com/keyfleet/keyfleet/protocol"
)

// cborPairs builds a CBOR map from already-encoded key/value pairs, in the
// order given, so tests can write what Sign would never emit.
func cborPairs(pairs ...[]byte) []byte {
	out := []byte{0xa0 + byte(len(pairs)/2)}
	for _, p := range pairs {
		out = append(out, p...)
	}
	return out
}

func enc(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := protocol.MarshalCanonical(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// manifestPairs returns the encoded pairs of a valid manifest, keyed by
// CBOR key, for tests that break one of them.
func manifestPairs(tb testing.TB, m *Manifest) map[int][]byte {
	tb.Helper()
	return map[int][]byte{
		1: enc(tb, FormatVersion),
		2: enc(tb, m.Version),
		3: enc(tb, m.VendorID[:]),
		4: enc(tb, m.ClassID[:]),
		5: enc(tb, m.Digest[:]),
		6: enc(tb, m.Size),
		7: enc(tb, m.URI),
	}
}

// payloadWith encodes the pairs of valid m in key order, with the given
// keys replaced (a nil value drops the key).
func payloadWith(tb testing.TB, m *Manifest, replace map[int][]byte) []byte {
	tb.Helper()
	pairs := manifestPairs(tb, m)
	for k, v := range replace {
		pairs[k] = v
	}
	var list [][]byte
	for k := 1; k <= 16; k++ {
		if v, ok := pairs[k]; ok && v != nil {
			list = append(list, []byte{byte(k)}, v)
		}
	}
	return cborPairs(list...)
}

type verifyCase struct {
	name string
	data []byte
	want error // nil: accepted
}

// verifyCases are signed manifests and what Verify must say about each,
// with fixedKey "A" trusted. TestVerify runs them; TestFuzzCorpus writes a
// selection as seeds.
func verifyCases(tb testing.TB) []verifyCase {
	tb.Helper()
	key := fixedKey(tb, "A")
	old := fixedKey(tb, "rotated-out")
	kid := keyID(tb, key.Public())
	img := testImage(1000, 1)
	m := testManifest(7, img)
	valid := mustSign(tb, m, key)
	prot := cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: kid}
	signed := func(payload []byte) []byte { return signRaw(tb, payload, key, prot, nil) }

	minimal := *m
	minimal.URI = ""
	maxed := *m
	maxed.Version, maxed.Size, maxed.URI = 1<<32-1, 1<<64-1, strings.Repeat("u", MaxURILen)

	var payloadChanged, detached []byte
	{
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(valid); err != nil {
			tb.Fatal(err)
		}
		msg.Payload = payloadWith(tb, m, map[int][]byte{6: enc(tb, m.Size+1)})
		payloadChanged = enc(tb, &msg)
		msg.Payload = nil
		detached = enc(tb, &msg)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	badSig := bytes.Clone(valid)
	badSig[len(badSig)-1] ^= 1
	uri7 := append([]byte{0xd8, 0x20}, enc(tb, m.URI)...) // tag 32 (URI) on the uri

	return []verifyCase{
		{"valid", valid, nil},
		{"valid without uri", mustSign(tb, &minimal, key), nil},
		{"valid with largest values", mustSign(tb, &maxed, key), nil},

		// Envelope.
		{"empty", nil, ErrMalformed},
		{"not tagged", valid[1:], ErrMalformed},
		{"bare payload", enc(tb, m.wire()), ErrMalformed},
		{"truncated", valid[:len(valid)-1], ErrMalformed},
		{"trailing byte", append(bytes.Clone(valid), 0), ErrMalformed},
		{"too large", append(bytes.Clone(valid), make([]byte, MaxManifestSize)...), ErrTooLarge},
		{"detached payload", detached, ErrMalformed},
		{"kid unprotected", signRaw(tb, enc(tb, m.wire()), key,
			cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256},
			cose.UnprotectedHeader{cose.HeaderLabelKeyID: kid}), ErrMalformed},
		{"extra protected header", signRaw(tb, enc(tb, m.wire()), key,
			cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: kid, cose.HeaderLabelContentType: 60},
			nil), ErrMalformed},
		{"unprotected header", signRaw(tb, enc(tb, m.wire()), key, prot,
			cose.UnprotectedHeader{cose.HeaderLabelContentType: 60}), ErrMalformed},
		{"short kid", signRaw(tb, enc(tb, m.wire()), key,
			cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: kid[:4]},
			nil), ErrMalformed},

		// Keys and signatures.
		{"rotated-out key", mustSign(tb, m, old), ErrUntrustedKey},
		{"trusted kid, other signer", signRaw(tb, enc(tb, m.wire()), old, prot, nil), ErrBadSignature},
		{"bad signature", badSig, ErrBadSignature},
		{"payload changed after signing", payloadChanged, ErrBadSignature},
		{"es384", signRaw(tb, enc(tb, m.wire()), p384,
			cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES384, cose.HeaderLabelKeyID: kid},
			nil), ErrBadSignature},

		// Payloads, validly signed by the trusted key.
		{"payload not a map", signed(enc(tb, []int{1, 2})), ErrMalformed},
		{"unknown field", signed(payloadWith(tb, m, map[int][]byte{8: enc(tb, 1)})), ErrMalformed},
		{"duplicate map key", signed(append(payloadWith(tb, m, nil)[:0:0],
			cborPairs([]byte{1}, enc(tb, 1), []byte{2}, enc(tb, 7), []byte{2}, enc(tb, 8))...)), ErrMalformed},
		{"indefinite-length map", signed(append(append([]byte{0xbf}, payloadWith(tb, m, nil)[1:]...), 0xff)), ErrMalformed},
		{"tag inside payload", signed(payloadWith(tb, m, map[int][]byte{7: uri7})), ErrMalformed},
		{"keys out of order", signed(cborPairs(
			[]byte{2}, enc(tb, m.Version), []byte{1}, enc(tb, 1),
			[]byte{3}, enc(tb, m.VendorID[:]), []byte{4}, enc(tb, m.ClassID[:]),
			[]byte{5}, enc(tb, m.Digest[:]), []byte{6}, enc(tb, m.Size))), ErrMalformed},
		{"non-minimal integer", signed(payloadWith(tb, m, map[int][]byte{2: {0x1a, 0, 0, 0, 7}})), ErrMalformed},
		{"empty uri present", signed(payloadWith(tb, m, map[int][]byte{7: enc(tb, "")})), ErrMalformed},
		{"format 2", signed(payloadWith(tb, m, map[int][]byte{1: enc(tb, 2)})), ErrMalformed},
		{"no format", signed(payloadWith(tb, m, map[int][]byte{1: nil})), ErrMalformed},
		{"version 0", signed(payloadWith(tb, m, map[int][]byte{2: enc(tb, 0)})), ErrMalformed},
		{"negative version", signed(payloadWith(tb, m, map[int][]byte{2: enc(tb, -7)})), ErrMalformed},
		{"version over uint32", signed(payloadWith(tb, m, map[int][]byte{2: enc(tb, uint64(1)<<32)})), ErrMalformed},
		{"short vendor id", signed(payloadWith(tb, m, map[int][]byte{3: enc(tb, m.VendorID[:15])})), ErrMalformed},
		{"zero class id", signed(payloadWith(tb, m, map[int][]byte{4: enc(tb, make([]byte, UUIDSize))})), ErrMalformed},
		{"class id as array", signed(payloadWith(tb, m, map[int][]byte{4: enc(tb, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})})), ErrMalformed},
		{"long digest", signed(payloadWith(tb, m, map[int][]byte{5: enc(tb, append(m.Digest[:], 0))})), ErrMalformed},
		{"size 0", signed(payloadWith(tb, m, map[int][]byte{6: enc(tb, 0)})), ErrMalformed},
		{"no size", signed(payloadWith(tb, m, map[int][]byte{6: nil})), ErrMalformed},
		{"uri too long", signed(payloadWith(tb, m, map[int][]byte{7: enc(tb, strings.Repeat("u", MaxURILen+1))})), ErrMalformed},
		{"uri not utf-8", signed(payloadWith(tb, m, map[int][]byte{7: {0x62, 0xff, 0xfe}})), ErrMalformed},
	}
}

func TestVerify(t *testing.T) {
	pub := fixedKey(t, "A").Public()
	for _, tc := range verifyCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Verify(tc.data, pub)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v, want success", err)
				}
				if m == nil {
					t.Fatal("Verify returned nil manifest and nil error")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: got error %v, want %v", err, tc.want)
			}
			if m != nil {
				t.Fatalf("Verify returned %+v with error %v", m, err)
			}
			if !IsRejection(err) {
				t.Fatalf("IsRejection(%v) = false, want true", err)
			}
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	key := fixedKey(t, "A")
	img := testImage(4096, 9)
	tests := []struct {
		name string
		m    Manifest
	}{
		{"with uri", *testManifest(2, img)},
		{"without uri", Manifest{VendorID: testVendor, ClassID: testClass, Version: 1, Digest: testManifest(1, img).Digest, Size: 4096}},
		{"largest", Manifest{VendorID: otherUUID, ClassID: otherUUID, Version: 1<<32 - 1, Digest: [DigestSize]byte{1}, Size: 1<<64 - 1, URI: strings.Repeat("é", MaxURILen/2)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			signed := mustSign(t, &tc.m, key)
			if len(signed) > MaxManifestSize {
				t.Fatalf("signed manifest is %d bytes, over MaxManifestSize %d", len(signed), MaxManifestSize)
			}
			got, err := Verify(signed, key.Public())
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if *got != tc.m {
				t.Fatalf("got %+v, want %+v", *got, tc.m)
			}
			// The kid is in the protected header, covered by the signature.
			var msg cose.Sign1Message
			if err := msg.UnmarshalCBOR(signed); err != nil {
				t.Fatal(err)
			}
			kid, _ := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
			if want := keyID(t, key.Public()); !bytes.Equal(kid, want) {
				t.Fatalf("protected kid %x, want %x", kid, want)
			}
			if alg, err := msg.Headers.Protected.Algorithm(); err != nil || alg != cose.AlgorithmES256 {
				t.Fatalf("protected alg %v (%v), want ES256", alg, err)
			}
			// Deterministic payload: signing again changes only the signature.
			var again cose.Sign1Message
			if err := again.UnmarshalCBOR(mustSign(t, &tc.m, key)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Payload, msg.Payload) {
				t.Fatalf("payload %x, then %x", msg.Payload, again.Payload)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	key := fixedKey(t, "A")
	good := testManifest(1, testImage(10, 0))
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	broken := func(f func(m *Manifest)) *Manifest {
		m := *good
		f(&m)
		return &m
	}
	tests := []struct {
		name string
		m    *Manifest
		key  crypto.Signer
		want error // nil: any error that is not a rejection (a key misuse)
	}{
		{"version 0", broken(func(m *Manifest) { m.Version = 0 }), key, ErrMalformed},
		{"zero vendor", broken(func(m *Manifest) { m.VendorID = UUID{} }), key, ErrMalformed},
		{"zero class", broken(func(m *Manifest) { m.ClassID = UUID{} }), key, ErrMalformed},
		{"zero digest", broken(func(m *Manifest) { m.Digest = [DigestSize]byte{} }), key, ErrMalformed},
		{"size 0", broken(func(m *Manifest) { m.Size = 0 }), key, ErrMalformed},
		{"uri too long", broken(func(m *Manifest) { m.URI = strings.Repeat("x", MaxURILen+1) }), key, ErrMalformed},
		{"p-384 key", good, p384, nil},
		{"ed25519 key", good, edKey, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Sign(tc.m, tc.key)
			if err == nil || b != nil {
				t.Fatalf("Sign: got %x, %v, want an error", b, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Sign: got %v, want %v", err, tc.want)
			}
			if tc.want == nil && IsRejection(err) {
				t.Fatalf("Sign: got %v, want a key error, not a rejection", err)
			}
		})
	}
}

func TestCheckImage(t *testing.T) {
	img := testImage(100, 5)
	m := testManifest(1, img)
	flipped := bytes.Clone(img)
	flipped[50] ^= 0x80
	tests := []struct {
		name string
		img  []byte
		want error
	}{
		{"exact", img, nil},
		{"one byte short", img[:99], ErrSize},
		{"one byte long", append(bytes.Clone(img), 0), ErrSize},
		{"empty", nil, ErrSize},
		{"one bit flipped", flipped, ErrDigest},
		{"other image, same size", testImage(100, 6), ErrDigest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := m.CheckImage(tc.img); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("CheckImage: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyRefusesNonP256TrustedKey(t *testing.T) {
	valid := mustSign(t, testManifest(1, testImage(10, 0)), fixedKey(t, "A"))
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, pub := range []any{nil, &p384.PublicKey, ed25519.PublicKey(make([]byte, 32)), (*ecdsa.PublicKey)(nil)} {
		m, err := Verify(valid, pub)
		if err == nil || m != nil {
			t.Fatalf("Verify with trusted key %T: got %v, %v, want an error", pub, m, err)
		}
		if IsRejection(err) {
			t.Fatalf("Verify with trusted key %T: %v is a rejection, want a configuration error", pub, err)
		}
	}
}

func TestUUID(t *testing.T) {
	u := UUID{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
	const s = "12345678-9abc-def0-0123-456789abcdef"
	if got := u.String(); got != s {
		t.Fatalf("String: got %q, want %q", got, s)
	}
	for _, in := range []string{s, strings.ToUpper(s)} {
		got, err := ParseUUID(in)
		if err != nil || got != u {
			t.Fatalf("ParseUUID(%q): got %v, %v, want %v", in, got, err, u)
		}
	}
	for _, bad := range []string{"", s[:35], s + "0", "123456789abc-def0-0123-456789abcdef-", "1234567x-9abc-def0-0123-456789abcdef", "12345678-9abc-def0-0123+456789abcdef"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q): got nil error, want one", bad)
		}
	}
	j, err := json.Marshal(u)
	if err != nil || string(j) != `"`+s+`"` {
		t.Fatalf("json.Marshal: got %s, %v, want %q", j, err, s)
	}
	var back UUID
	if err := json.Unmarshal(j, &back); err != nil || back != u {
		t.Fatalf("json round trip: got %v, %v, want %v", back, err, u)
	}
}
