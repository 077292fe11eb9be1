package protocol

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Fixtures of the COSE_Encrypt0 tests. The fuzz seeds are sealed to
// fixedKey("A") for testDevice; HPKE draws a fresh ephemeral key on every
// seal, so the seed files differ each time they are rewritten.

// dataKey returns n recognisable key bytes: 0x00, 0x01, ...
func dataKey(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func seal(tb testing.TB, key *ecdsa.PrivateKey, plaintext []byte, audience string) []byte {
	tb.Helper()
	b, err := SealEncrypt0(&key.PublicKey, plaintext, audience)
	if err != nil {
		tb.Fatalf("SealEncrypt0: %v", err)
	}
	return b
}

// e0Bstr encodes b as a CBOR byte string.
func e0Bstr(b []byte) []byte {
	var h []byte
	switch n := len(b); {
	case n < 24:
		h = []byte{0x40 | byte(n)}
	case n < 256:
		h = []byte{0x58, byte(n)}
	default:
		h = []byte{0x59, byte(n >> 8), byte(n)}
	}
	return append(h, b...)
}

func e0Cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// encrypt0Parts are the variable fields of a sealed message, for tests
// that rebuild it by hand with one thing changed.
type encrypt0Parts struct{ kid, ek, ct []byte }

func partsOf(tb testing.TB, sealed []byte) encrypt0Parts {
	tb.Helper()
	msg, err := parseEncrypt0(sealed)
	if err != nil {
		tb.Fatalf("parse own COSE_Encrypt0: %v", err)
	}
	return encrypt0Parts{kid: msg.Unprotected[4], ek: msg.Unprotected[-4], ct: msg.Ciphertext}
}

const (
	e0Head      = "d0 83"       // tag 16, array(3)
	e0Protected = "44 a1011823" // bstr({1: 35})
)

// unprot encodes the canonical unprotected header {4: kid, -4: ek}.
func (p encrypt0Parts) unprot() []byte {
	return e0Cat([]byte{0xa2, 0x04}, e0Bstr(p.kid), []byte{0x23}, e0Bstr(p.ek))
}

// build assembles a tagged COSE_Encrypt0 from encoded parts.
func (p encrypt0Parts) build(tb testing.TB, protected string, unprotected, ct []byte) []byte {
	tb.Helper()
	return e0Cat(unhex(tb, e0Head+protected), unprotected, ct)
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	if i < 0 {
		i += len(c)
	}
	c[i] ^= 0x01
	return c
}

type encrypt0Case struct {
	name string
	raw  []byte
	want error
}

// encrypt0Rejects returns packets that OpenEncrypt0 must refuse for key
// and testDevice, each a variation of one message sealed to key.
func encrypt0Rejects(tb testing.TB, key *ecdsa.PrivateKey) []encrypt0Case {
	tb.Helper()
	good := seal(tb, key, dataKey(16), testDevice)
	p := partsOf(tb, good)
	ct := e0Bstr(p.ct)
	other := partsOf(tb, seal(tb, key, dataKey(16), testDevice))
	iv := bytes.Repeat([]byte{0xee}, 12)
	huge := e0Cat(good, make([]byte, MaxEncrypt0Size+1-len(good)))
	return []encrypt0Case{
		// Envelope.
		{"raw-empty", nil, ErrMalformed},
		{"raw-untagged", good[1:], ErrMalformed},
		{"raw-sign1-tag", e0Cat([]byte{0xd2}, good[1:]), ErrMalformed},
		{"raw-tag-16-in-two-bytes", e0Cat([]byte{0xd8, 0x10}, good[1:]), ErrMalformed},
		{"raw-four-elements", e0Cat(unhex(tb, "d0 84"+e0Protected), p.unprot(), ct, []byte{0x40}), ErrMalformed},
		{"raw-two-elements", e0Cat(unhex(tb, "d0 82"+e0Protected), p.unprot()), ErrMalformed},
		{"raw-trailing-byte", e0Cat(good, []byte{0x00}), ErrMalformed},
		{"raw-too-large", huge, ErrTooLarge},
		// Protected header.
		{"raw-wrong-alg", p.build(tb, "43 a10101", p.unprot(), ct), ErrDecrypt}, // A128GCM
		{"raw-alg-hpke-7", p.build(tb, "44 a101182d", p.unprot(), ct), ErrDecrypt},
		{"raw-alg-as-text", p.build(tb, "49 a101 66 48504b452d30", p.unprot(), ct), ErrMalformed},
		{"raw-alg-non-minimal", p.build(tb, "45 a1011900 23", p.unprot(), ct), ErrMalformed},
		{"raw-protected-empty", p.build(tb, "40", p.unprot(), ct), ErrMalformed},
		{"raw-protected-not-wrapped", p.build(tb, "a1011823", p.unprot(), ct), ErrMalformed},
		{"raw-protected-array", p.build(tb, "42 8101", p.unprot(), ct), ErrMalformed},
		{"raw-protected-extra-kid", p.build(tb, fmt.Sprintf("4e a2011823 0448%x", p.kid), p.unprot(), ct), ErrMalformed},
		{"raw-protected-duplicate-alg", p.build(tb, "47 a2011823011823", p.unprot(), ct), ErrMalformed},
		{"raw-protected-null", p.build(tb, "f6", p.unprot(), ct), ErrMalformed},
		// Unprotected header.
		{"raw-extra-unprotected-header", p.build(tb, e0Protected,
			e0Cat([]byte{0xa3, 0x04}, e0Bstr(p.kid), []byte{0x05}, e0Bstr(iv), []byte{0x23}, e0Bstr(p.ek)), ct), ErrMalformed},
		{"raw-missing-ek", p.build(tb, e0Protected, e0Cat([]byte{0xa1, 0x04}, e0Bstr(p.kid)), ct), ErrMalformed},
		{"raw-missing-kid", p.build(tb, e0Protected, e0Cat([]byte{0xa1, 0x23}, e0Bstr(p.ek)), ct), ErrMalformed},
		{"raw-kid-4-bytes", p.build(tb, e0Protected,
			e0Cat([]byte{0xa2, 0x04}, e0Bstr(p.kid[:4]), []byte{0x23}, e0Bstr(p.ek)), ct), ErrMalformed},
		{"raw-ek-compressed", p.build(tb, e0Protected,
			e0Cat([]byte{0xa2, 0x04}, e0Bstr(p.kid), []byte{0x23}, e0Bstr(p.ek[:33])), ct), ErrMalformed},
		{"raw-ek-as-text", p.build(tb, e0Protected,
			e0Cat([]byte{0xa2, 0x04}, e0Bstr(p.kid), []byte{0x23, 0x61, 0x78}), ct), ErrMalformed},
		{"raw-non-canonical-order", p.build(tb, e0Protected,
			e0Cat([]byte{0xa2, 0x23}, e0Bstr(p.ek), []byte{0x04}, e0Bstr(p.kid)), ct), ErrMalformed},
		{"raw-non-minimal-kid-length", p.build(tb, e0Protected,
			e0Cat([]byte{0xa2, 0x04, 0x58, 0x08}, p.kid, []byte{0x23}, e0Bstr(p.ek)), ct), ErrMalformed},
		{"raw-unprotected-null", p.build(tb, e0Protected, []byte{0xf6}, ct), ErrMalformed},
		// Ciphertext.
		{"raw-detached-ciphertext", p.build(tb, e0Protected, p.unprot(), []byte{0xf6}), ErrMalformed},
		{"raw-ciphertext-as-text", p.build(tb, e0Protected, p.unprot(), append([]byte{0x60 | 2}, "ab"...)), ErrMalformed},
		// Cryptographic failures.
		{"tampered-ek", p.build(tb, e0Protected, encrypt0Parts{p.kid, flip(p.ek, -1), nil}.unprot(), ct), ErrDecrypt},
		{"ek-of-another-message", p.build(tb, e0Protected, encrypt0Parts{p.kid, other.ek, nil}.unprot(), ct), ErrDecrypt},
		{"tampered-ciphertext", p.build(tb, e0Protected, p.unprot(), e0Bstr(flip(p.ct, 0))), ErrDecrypt},
		{"tampered-gcm-tag", p.build(tb, e0Protected, p.unprot(), e0Bstr(flip(p.ct, -1))), ErrDecrypt},
		{"truncated-ciphertext", p.build(tb, e0Protected, p.unprot(), e0Bstr(p.ct[:len(p.ct)-1])), ErrDecrypt},
		{"empty-ciphertext", p.build(tb, e0Protected, p.unprot(), []byte{0x40}), ErrDecrypt},
		{"tampered-kid", p.build(tb, e0Protected, encrypt0Parts{flip(p.kid, 0), p.ek, nil}.unprot(), ct), ErrWrongRecipient},
	}
}

func TestEncrypt0RoundTrip(t *testing.T) {
	key := newKey(t)
	for _, tc := range []struct {
		name      string
		plaintext []byte
		audience  string
	}{
		{"16-byte key", dataKey(16), testDevice},
		{"32-byte key", dataKey(32), testDevice},
		{"broadcast", dataKey(16), ""},
		{"empty plaintext", []byte{}, testDevice},
		{"900 bytes", dataKey(900), testDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := seal(t, key, tc.plaintext, tc.audience)
			if len(b) > MaxEncrypt0Size {
				t.Fatalf("sealed %d bytes, over MaxEncrypt0Size", len(b))
			}
			got, err := OpenEncrypt0(key, b, tc.audience)
			if err != nil {
				t.Fatalf("OpenEncrypt0: %v", err)
			}
			if !bytes.Equal(got, tc.plaintext) {
				t.Errorf("OpenEncrypt0 = %x, want %x", got, tc.plaintext)
			}
			if kid := partsOf(t, b).kid; !bytes.Equal(kid, keyID(t, key)) {
				t.Errorf("kid %x, want KeyID of the recipient %x", kid, keyID(t, key))
			}
		})
	}
}

// Each seal uses a fresh ephemeral key: the same data key sealed twice
// gives unrelated messages, so an observer cannot tell a resend.
func TestEncrypt0Randomized(t *testing.T) {
	key := newKey(t)
	a, b := seal(t, key, dataKey(16), testDevice), seal(t, key, dataKey(16), testDevice)
	pa, pb := partsOf(t, a), partsOf(t, b)
	if bytes.Equal(pa.ek, pb.ek) || bytes.Equal(pa.ct, pb.ct) {
		t.Errorf("two seals share ek or ciphertext:\n%x\n%x", a, b)
	}
}

func TestEncrypt0TooLarge(t *testing.T) {
	if b, err := SealEncrypt0(&newKey(t).PublicKey, dataKey(1000), testDevice); !errors.Is(err, ErrTooLarge) {
		t.Errorf("SealEncrypt0 of 1000 bytes: got %d bytes, err %v, want %v", len(b), err, ErrTooLarge)
	}
}

// A data key sealed for one device and one identity key opens nowhere else.
func TestEncrypt0Binding(t *testing.T) {
	a, b := newKey(t), newKey(t)
	sealed := seal(t, a, dataKey(16), testDevice)
	p := partsOf(t, sealed)
	forged := p.build(t, e0Protected, encrypt0Parts{keyID(t, b), p.ek, nil}.unprot(), e0Bstr(p.ct))
	for _, tc := range []struct {
		name     string
		key      *ecdsa.PrivateKey
		data     []byte
		audience string
		want     error
		notWant  error
	}{
		{"wrong recipient", b, sealed, testDevice, ErrWrongRecipient, nil},
		{"kid rewritten to the wrong recipient's", b, forged, testDevice, ErrDecrypt, ErrWrongRecipient},
		{"other device", a, sealed, "dev-000043", ErrDecrypt, ErrWrongRecipient},
		{"opened as broadcast", a, sealed, "", ErrDecrypt, ErrWrongRecipient},
		{"broadcast opened for a device", a, seal(t, a, dataKey(16), ""), testDevice, ErrDecrypt, ErrWrongRecipient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := OpenEncrypt0(tc.key, tc.data, tc.audience)
			if !errors.Is(err, tc.want) || pt != nil {
				t.Fatalf("OpenEncrypt0: got %x, err %v, want %v", pt, err, tc.want)
			}
			if !errors.Is(err, ErrDecrypt) {
				t.Errorf("err %v does not match ErrDecrypt", err)
			}
			if tc.notWant != nil && errors.Is(err, tc.notWant) {
				t.Errorf("err %v matches %v, want it not to", err, tc.notWant)
			}
		})
	}
}

func TestEncrypt0Rejects(t *testing.T) {
	key := newKey(t)
	for _, tc := range encrypt0Rejects(t, key) {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := OpenEncrypt0(key, tc.raw, testDevice)
			if !errors.Is(err, tc.want) || pt != nil {
				t.Errorf("OpenEncrypt0(%x): got %x, err %v, want %v", tc.raw, pt, err, tc.want)
			}
		})
	}
}

func TestEncrypt0RequiresP256(t *testing.T) {
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SealEncrypt0(&k384.PublicKey, dataKey(16), testDevice); err == nil {
		t.Error("SealEncrypt0 to a P-384 key: got nil error, want refusal")
	}
	if _, err := SealEncrypt0(nil, dataKey(16), testDevice); err == nil {
		t.Error("SealEncrypt0 to nil: got nil error, want refusal")
	}
	sealed := seal(t, newKey(t), dataKey(16), testDevice)
	if _, err := OpenEncrypt0(k384, sealed, testDevice); err == nil {
		t.Error("OpenEncrypt0 with a P-384 key: got nil error, want refusal")
	}
	if _, err := OpenEncrypt0(nil, sealed, testDevice); err == nil {
		t.Error("OpenEncrypt0 with nil: got nil error, want refusal")
	}
}

// TestEncrypt0Size measures a sealed data key against DESIGN.md's budget
// of about 120 bytes for a 16-byte key. The size depends only on the
// plaintext length: tag+array (2) + protected (5) + unprotected with an
// 8-byte kid and a 65-byte ek (79) + ciphertext head (2) + plaintext + GCM
// tag (16).
func TestEncrypt0Size(t *testing.T) {
	key := newKey(t)
	for _, tc := range []struct{ keyLen, want int }{{16, 120}, {32, 136}} {
		b := seal(t, key, dataKey(tc.keyLen), testDevice)
		t.Logf("sealed %d-byte data key: %d bytes", tc.keyLen, len(b))
		if len(b) != tc.want {
			t.Errorf("sealed %d-byte key: %d bytes, want %d", tc.keyLen, len(b), tc.want)
		}
	}
}

// The Enc_structure is what HPKE authenticates; an empty external AAD is
// the empty byte string (not null), as RFC 9052 §5.3 requires.
func TestEncStructure(t *testing.T) {
	for _, tc := range []struct{ audience, want string }{
		{"", "83 68 456e637279707430 44 a1011823 40"},
		{testDevice, "83 68 456e637279707430 44 a1011823 55 6b6579666c6565742f642f6465762d303030303432"},
	} {
		got, err := encStructure(hpke0Protected(), tc.audience)
		if err != nil {
			t.Fatal(err)
		}
		if want := unhex(t, tc.want); !bytes.Equal(got, want) {
			t.Errorf("Enc_structure for %q = %x, want %x", tc.audience, got, want)
		}
	}
}

// TestEncrypt0DraftExample decrypts the HPKE-0 integrated encryption
// example of draft-ietf-cose-hpke ("COSE HPKE Integrated Encryption Mode",
// recipient "bob", empty external AAD and info). Its kid is not one of our
// KeyIDs, so this drives the decoder and the HPKE step directly: it pins
// the codepoints, the Enc_structure and the HPKE parameters to the draft.
func TestEncrypt0DraftExample(t *testing.T) {
	data := unhex(t, `
		d08344a1011823a20443626f622358410457229bdd99407b384a9e59fa15
		53224d58b106e9ebebdaa06d2126bd96757674847669966ecb0dcdf21af5
		623f19f0b799b0cddf3ee930b739dd474f6282de0158253f3c1595e9d252
		e816215a9ce73f47ba4b57acb06ecc39ca5a03a14108bbe7807af5688d61`)
	d := unhex(t, "eca39300147c91a2a65d17e00ea278b57a14178245bf5686d9a404cca1816b8e")
	var msg encrypt0
	if err := UnmarshalStrict(data[1:], &msg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(msg.Protected, hpke0Protected()) {
		t.Errorf("draft protected header %x, ours %x", msg.Protected, hpke0Protected())
	}
	if ek := msg.Unprotected[HeaderLabelEncapsulatedKey]; len(ek) != encapsulatedKeySize {
		t.Errorf("draft ek under label %d: %d bytes, want %d", HeaderLabelEncapsulatedKey, len(ek), encapsulatedKeySize)
	}
	sk, err := hpke.DHKEM(ecdh.P256()).NewPrivateKey(d)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := openHPKE0(sk, &msg, "")
	if err != nil {
		t.Fatalf("open draft example: %v", err)
	}
	// The draft's prose says "This is the content." but the example was
	// made from a file with a trailing newline: 21 bytes, as the 37-byte
	// ciphertext (21 + 16-byte tag) shows.
	if want := "This is the content.\n"; string(pt) != want {
		t.Errorf("draft example decrypts to %q, want %q", pt, want)
	}
	// Re-encoded with our encoder, the example is byte for byte the same:
	// our canonical form is the draft's.
	if canon, err := marshalEncrypt0(&msg); err != nil || !bytes.Equal(canon, data) {
		t.Errorf("re-encoded draft example %x (err %v), want %x", canon, err, data)
	}
}

func FuzzOpenEncrypt0(f *testing.F) {
	key := fixedKey(f, "A")
	other := fixedKey(f, "B")
	f.Add(seal(f, key, dataKey(16), testDevice))
	f.Add(seal(f, key, dataKey(32), testDevice))
	f.Add(seal(f, other, dataKey(16), testDevice))
	for _, tc := range encrypt0Rejects(f, key) {
		f.Add(tc.raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pt, err := OpenEncrypt0(key, data, testDevice)
		if err != nil {
			if pt != nil {
				t.Fatalf("OpenEncrypt0(%x) returned %x with err %v", data, pt, err)
			}
			if !IsRejection(err) && !errors.Is(err, ErrDecrypt) {
				t.Fatalf("OpenEncrypt0(%x): error %v is none of the package's sentinels", data, err)
			}
			if len(data) > MaxEncrypt0Size && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("OpenEncrypt0 of %d bytes: err %v, want %v", len(data), err, ErrTooLarge)
			}
			return
		}
		// Accepted: within the cap, in its one canonical form, and bound to
		// both the audience and the key.
		if len(data) > MaxEncrypt0Size {
			t.Fatalf("OpenEncrypt0 accepted %d bytes, over MaxEncrypt0Size", len(data))
		}
		msg, err := parseEncrypt0(data)
		if err != nil {
			t.Fatalf("accepted %x, which parseEncrypt0 refuses: %v", data, err)
		}
		if canon, err := marshalEncrypt0(msg); err != nil || !bytes.Equal(canon, data) {
			t.Fatalf("accepted %x, which re-encodes as %x (err %v)", data, canon, err)
		}
		if _, err := OpenEncrypt0(key, data, "dev-000043"); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("accepted %x for %s and also for another device (err %v)", data, testDevice, err)
		}
		if _, err := OpenEncrypt0(other, data, testDevice); !errors.Is(err, ErrWrongRecipient) {
			t.Fatalf("accepted %x for key A; key B got err %v, want %v", data, err, ErrWrongRecipient)
		}
	})
}

// TestEncrypt0FuzzCorpus checks that the seed corpus of FuzzOpenEncrypt0
// under testdata/fuzz is there, so that plain `go test` runs the fuzz body
// on it. With KEYFLEET_WRITE_FUZZ_CORPUS=1 it rewrites the files instead:
//
//	KEYFLEET_WRITE_FUZZ_CORPUS=1 go test -run TestEncrypt0FuzzCorpus ./protocol
func TestEncrypt0FuzzCorpus(t *testing.T) {
	rewrite := os.Getenv("KEYFLEET_WRITE_FUZZ_CORPUS") == "1"
	dir := filepath.Join("testdata", "fuzz", "FuzzOpenEncrypt0")
	key := fixedKey(t, "A")
	seeds := []encrypt0Case{
		{name: "key-16", raw: seal(t, key, dataKey(16), testDevice)},
		{name: "key-32", raw: seal(t, key, dataKey(32), testDevice)},
		{name: "broadcast-key-16", raw: seal(t, key, dataKey(16), "")},
		{name: "other-recipient", raw: seal(t, fixedKey(t, "B"), dataKey(16), testDevice)},
	}
	for _, tc := range encrypt0Rejects(t, key) {
		if strings.HasPrefix(tc.name, "raw-") && tc.name != "raw-too-large" {
			seeds = append(seeds, tc)
		}
	}
	if rewrite {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range seeds {
		path := filepath.Join(dir, s.name)
		if !rewrite {
			// The seals are randomized: check the seed is there, not its bytes.
			if _, err := os.Stat(path); err != nil {
				t.Errorf("seed %s missing (KEYFLEET_WRITE_FUZZ_CORPUS=1 go test -run TestEncrypt0FuzzCorpus ./protocol writes it): %v", path, err)
			}
			continue
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%+q)\n", s.raw)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
