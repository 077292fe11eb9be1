package hsm_test

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/server/hsm"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfc5649KEK is the 192-bit KEK of RFC 5649 section 6.
const rfc5649KEK = "5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8"

// rfc5649Vectors are the two examples of RFC 5649 section 6: one that takes
// the multi-block path and one that fits the single-block path.
var rfc5649Vectors = []struct {
	name      string
	key, wrap string
}{
	{"20 octets", "c37b7e6492584340 bed1220780894115 5068f738", "138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"},
	{"7 octets", "466f7250617369", "afbeb0f07dfbf541 9200f2ccb50bb24f"},
}

func TestWrapPadRFC5649Vectors(t *testing.T) {
	kek := unhex(t, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		t.Run(v.name, func(t *testing.T) {
			key, want := unhex(t, v.key), unhex(t, v.wrap)
			got, err := hsm.WrapPad(kek, key)
			if err != nil {
				t.Fatalf("WrapPad: got error %v, want nil", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("WrapPad: got %x, want %x", got, want)
			}
			back, err := hsm.UnwrapPad(kek, want)
			if err != nil {
				t.Fatalf("UnwrapPad: got error %v, want nil", err)
			}
			if !bytes.Equal(back, key) {
				t.Fatalf("UnwrapPad: got %x, want %x", back, key)
			}
		})
	}
}

func TestWrapPadRoundTrip(t *testing.T) {
	for _, kekLen := range []int{16, 24, 32} {
		kek := make([]byte, kekLen)
		rand.Read(kek)
		for n := 1; n <= 72; n++ {
			key := make([]byte, n)
			rand.Read(key)
			w, err := hsm.WrapPad(kek, key)
			if err != nil {
				t.Fatalf("KEK %d, key %d: WrapPad: got error %v, want nil", kekLen, n, err)
			}
			if want := 8 + (n+7)/8*8; len(w) != want {
				t.Fatalf("KEK %d, key %d: wrapped length: got %d, want %d", kekLen, n, len(w), want)
			}
			got, err := hsm.UnwrapPad(kek, w)
			if err != nil {
				t.Fatalf("KEK %d, key %d: UnwrapPad: got error %v, want nil", kekLen, n, err)
			}
			if !bytes.Equal(got, key) {
				t.Fatalf("KEK %d, key %d: UnwrapPad: got another key, want the wrapped one", kekLen, n)
			}
		}
	}
}

// TestUnwrapPadRejects flips every bit of wrapped keys of both code paths
// (single block and multi-block), and tries other KEKs and lengths.
func TestUnwrapPadRejects(t *testing.T) {
	kek := unhex(t, rfc5649KEK)
	other := bytes.Clone(kek)
	other[0] ^= 1
	for _, n := range []int{1, 7, 8, 9, 16, 20, 32} {
		key := bytes.Repeat([]byte{0x5a}, n)
		w, err := hsm.WrapPad(kek, key)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 8 * len(w) {
			bad := bytes.Clone(w)
			bad[i/8] ^= 1 << (i % 8)
			if got, err := hsm.UnwrapPad(kek, bad); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
				t.Fatalf("key %d, bit %d flipped: got (%x, %v), want (nil, ErrUnwrap)", n, i, got, err)
			}
		}
		if got, err := hsm.UnwrapPad(other, w); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
			t.Errorf("key %d under another KEK: got (%x, %v), want (nil, ErrUnwrap)", n, got, err)
		}
		for _, cut := range [][]byte{w[:len(w)-1], w[:len(w)-8], w[8:], append(bytes.Clone(w), 0)} {
			if got, err := hsm.UnwrapPad(kek, cut); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
				t.Errorf("key %d, blob of %d bytes: got (%x, %v), want (nil, ErrUnwrap)", n, len(cut), got, err)
			}
		}
	}
	for _, l := range []int{0, 8, 15} {
		if _, err := hsm.UnwrapPad(kek, make([]byte, l)); !errors.Is(err, hsm.ErrUnwrap) {
			t.Errorf("UnwrapPad of %d bytes: got %v, want ErrUnwrap", l, err)
		}
	}
}

// wrapWithIV is RFC 3394 wrapping (§2.2.1, index form) with an arbitrary
// 8-byte IV, or a single AES block when p is one block as RFC 5649 §4.1
// does: a test-only reference for crafting blobs whose integrity block is
// wrong in a chosen way.
func wrapWithIV(t *testing.T, kek, iv, p []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) == 8 {
		out := append(bytes.Clone(iv), p...)
		b.Encrypt(out, out)
		return out
	}
	n := len(p) / 8
	a := bytes.Clone(iv)
	r := bytes.Clone(p)
	blk := make([]byte, 16)
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(blk, a)
			copy(blk[8:], r[8*i:8*i+8])
			b.Encrypt(blk, blk)
			binary.BigEndian.PutUint64(a, binary.BigEndian.Uint64(blk[:8])^uint64(n*j+i+1))
			copy(r[8*i:], blk[8:])
		}
	}
	return append(a, r...)
}

// TestUnwrapPadChecksAIV crafts blobs whose Alternative Initial Value is
// wrong in each way RFC 5649 §3 checks (magic, MLI range, non-zero
// padding), on both the single-block and the multi-block path.
func TestUnwrapPadChecksAIV(t *testing.T) {
	kek := unhex(t, rfc5649KEK)
	aiv := func(magic uint32, mli uint32) []byte {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, magic)
		binary.BigEndian.PutUint32(b[4:], mli)
		return b
	}
	const magic = 0xa65959a6
	p8 := []byte{1, 2, 3, 0, 0, 0, 0, 0}
	p16 := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name    string
		iv, p   []byte
		wantKey []byte // nil: want ErrUnwrap
	}{
		{"1 block ok", aiv(magic, 3), p8, p8[:3]},
		{"1 block full", aiv(magic, 8), []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{"1 block bad magic", aiv(magic^1, 3), p8, nil},
		{"1 block RFC 3394 IV", []byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}, p8, nil},
		{"1 block MLI 0", aiv(magic, 0), make([]byte, 8), nil},
		{"1 block MLI 9", aiv(magic, 9), p8, nil},
		{"1 block MLI too small for padding", aiv(magic, 2), p8, nil},
		{"1 block non-zero padding", aiv(magic, 3), []byte{1, 2, 3, 0, 0, 0, 0, 1}, nil},
		{"2 blocks ok", aiv(magic, 10), p16, p16[:10]},
		{"2 blocks MLI 16", aiv(magic, 16), p16, p16},
		{"2 blocks MLI 8 (too small)", aiv(magic, 8), p16, nil},
		{"2 blocks MLI 17", aiv(magic, 17), p16, nil},
		{"2 blocks MLI huge", aiv(magic, 0xffffffff), p16, nil},
		{"2 blocks bad magic", aiv(0xa65959a7, 10), p16, nil},
		{"2 blocks non-zero padding", aiv(magic, 9), p16, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := wrapWithIV(t, kek, tc.iv, tc.p)
			got, err := hsm.UnwrapPad(kek, blob)
			if tc.wantKey == nil {
				if !errors.Is(err, hsm.ErrUnwrap) || got != nil {
					t.Fatalf("UnwrapPad: got (%x, %v), want (nil, ErrUnwrap)", got, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.wantKey) {
				t.Fatalf("UnwrapPad: got (%x, %v), want (%x, nil)", got, err, tc.wantKey)
			}
		})
	}
	// The reference agrees with WrapPad on a valid AIV.
	w, err := hsm.WrapPad(kek, p16[:10])
	if err != nil {
		t.Fatal(err)
	}
	if ref := wrapWithIV(t, kek, aiv(magic, 10), p16); !bytes.Equal(w, ref) {
		t.Fatalf("WrapPad: got %x, want the reference %x", w, ref)
	}
}

func TestWrapPadArgs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		kek, key []byte
	}{
		{"empty key", make([]byte, 32), nil},
		{"short KEK", make([]byte, 15), make([]byte, 16)},
		{"odd KEK", make([]byte, 33), make([]byte, 16)},
		{"no KEK", nil, make([]byte, 16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if w, err := hsm.WrapPad(tc.kek, tc.key); err == nil {
				t.Errorf("WrapPad: got (%x, nil), want an error", w)
			}
		})
	}
	if _, err := hsm.UnwrapPad(make([]byte, 7), make([]byte, 24)); err == nil {
		t.Error("UnwrapPad with a 7-byte KEK: got nil error, want one")
	}
}

// FuzzUnwrapPad: UnwrapPad never panics on any input, and whatever it
// accepts wraps back to the same blob (the algorithm is a bijection).
func FuzzUnwrapPad(f *testing.F) {
	kek := unhex(f, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		f.Add(unhex(f, v.wrap))
	}
	f.Add(make([]byte, 24))
	f.Fuzz(func(t *testing.T, blob []byte) {
		key, err := hsm.UnwrapPad(kek, blob)
		if err != nil {
			if !errors.Is(err, hsm.ErrUnwrap) {
				t.Fatalf("UnwrapPad: got error %v, want ErrUnwrap", err)
			}
			return
		}
		again, err := hsm.WrapPad(kek, key)
		if err != nil || !bytes.Equal(again, blob) {
			t.Fatalf("WrapPad(UnwrapPad(blob)): got (%x, %v), want (%x, nil)", again, err, blob)
		}
	})
}

// FuzzWrapPadRoundTrip: every key wraps and unwraps back to itself.
func FuzzWrapPadRoundTrip(f *testing.F) {
	kek := unhex(f, rfc5649KEK)
	f.Add([]byte{0})
	f.Add(bytes.Repeat([]byte{0xff}, 33))
	f.Fuzz(func(t *testing.T, key []byte) {
		if len(key) == 0 {
			return
		}
		w, err := hsm.WrapPad(kek, key)
		if err != nil {
			t.Fatalf("WrapPad: got error %v, want nil", err)
		}
		got, err := hsm.UnwrapPad(kek, w)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("UnwrapPad(WrapPad(key)): got (%x, %v), want (%x, nil)", got, err, key)
		}
	})
}
