package datakey_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/datakey"
)

// testKey returns recognisable key material for version v: n bytes of
// 0xa0+v, so that a leak shows in any dump.
func testKey(v uint32, n int) []byte { return bytes.Repeat([]byte{0xa0 + byte(v)}, n) }

// keysetOf builds a keyset by rotating through versions 1..n, with
// 16-byte keys for odd versions and 32-byte keys for even ones.
func keysetOf(t *testing.T, n uint32) *datakey.Keyset {
	t.Helper()
	var ks datakey.Keyset
	for v := uint32(1); v <= n; v++ {
		if err := ks.Rotate(v, testKey(v, 16+16*int(1-v%2))); err != nil {
			t.Fatalf("Rotate(%d): %v", v, err)
		}
	}
	return &ks
}

func versionsString(ks *datakey.Keyset) string {
	var parts []string
	for _, vi := range ks.Versions() {
		parts = append(parts, fmt.Sprintf("%d:%v", vi.Version, vi.Status))
	}
	return strings.Join(parts, " ")
}

func mustEncrypt(t *testing.T, ks *datakey.Keyset, plaintext, aad string) []byte {
	t.Helper()
	ct, err := ks.Encrypt([]byte(plaintext), []byte(aad))
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return ct
}

func TestRoundTripAcrossVersions(t *testing.T) {
	var ks datakey.Keyset
	type written struct {
		version    uint32
		ciphertext []byte
		plaintext  string
	}
	var all []written
	for v := uint32(1); v <= 4; v++ {
		if err := ks.Rotate(v, testKey(v, 16+16*int(v%2))); err != nil {
			t.Fatalf("Rotate(%d): %v", v, err)
		}
		pt := fmt.Sprintf("written under version %d", v)
		ct := mustEncrypt(t, &ks, pt, "sensor.log")
		if got, err := datakey.VersionOf(ct); err != nil || got != v {
			t.Fatalf("VersionOf = %d, %v, want %d", got, err, v)
		}
		if got, want := len(ct), len(pt)+datakey.Overhead; got != want {
			t.Errorf("ciphertext %d bytes, want %d (plaintext + Overhead)", got, want)
		}
		all = append(all, written{v, ct, pt})
	}
	for _, w := range all {
		t.Run(fmt.Sprintf("v%d", w.version), func(t *testing.T) {
			got, err := ks.Decrypt(w.ciphertext, []byte("sensor.log"))
			if err != nil || string(got) != w.plaintext {
				t.Errorf("Decrypt = %q, %v, want %q", got, err, w.plaintext)
			}
		})
	}
	if got, want := versionsString(&ks), "1:decrypt-only 2:decrypt-only 3:decrypt-only 4:primary"; got != want {
		t.Errorf("Versions = %s, want %s", got, want)
	}
}

// A DecryptOnly version reads old data but never writes new data.
func TestDecryptOnly(t *testing.T) {
	ks := keysetOf(t, 1)
	old := mustEncrypt(t, ks, "old", "")
	if err := ks.Add(2, testKey(2, 32)); err != nil {
		t.Fatal(err)
	}
	// Staged: version 2 can decrypt, version 1 still encrypts.
	staged, err := datakey.Encrypt(testKey(2, 32), 2, []byte("from a peer that rotated first"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Decrypt(staged, nil); err != nil {
		t.Errorf("Decrypt under staged version 2: %v", err)
	}
	if v, _ := datakey.VersionOf(mustEncrypt(t, ks, "x", "")); v != 1 {
		t.Errorf("Encrypt after Add(2) used version %d, want 1 (the primary)", v)
	}
	if err := ks.SetPrimary(2); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if v, _ := datakey.VersionOf(mustEncrypt(t, ks, "new", "")); v != 2 {
			t.Fatalf("Encrypt after SetPrimary(2) used version %d, want 2", v)
		}
	}
	if got, err := ks.Decrypt(old, nil); err != nil || string(got) != "old" {
		t.Errorf("Decrypt of version-1 data after rotation = %q, %v, want \"old\"", got, err)
	}
	if got, want := versionsString(ks), "1:decrypt-only 2:primary"; got != want {
		t.Errorf("Versions = %s, want %s", got, want)
	}
}

func TestDecryptRefuses(t *testing.T) {
	ks := keysetOf(t, 4) // 1..3 decrypt-only, 4 primary
	ct1 := mustEncrypt(t, ks, "x", "")
	v1 := func() []byte { // version-1 data
		c, err := datakey.Encrypt(testKey(1, 16), 1, []byte("one"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	v2, err := datakey.Encrypt(testKey(2, 32), 2, []byte("two"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v3, err := datakey.Encrypt(testKey(3, 16), 3, []byte("three"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v9, err := datakey.Encrypt(testKey(9, 16), 9, []byte("nine"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(2); err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(3); err != nil {
		t.Fatal(err)
	}
	if err := ks.Destroy(3); err != nil {
		t.Fatal(err)
	}
	with := func(b []byte, i int, x byte) []byte {
		c := bytes.Clone(b)
		if i < 0 {
			i += len(c)
		}
		c[i] ^= x
		return c
	}
	for _, tc := range []struct {
		name       string
		ciphertext []byte
		aad        string
		want       error
	}{
		{"control: decrypt-only version 1", v1(), "aad", nil},
		{"control: primary", ct1, "", nil},
		{"retired version", v2, "", datakey.ErrRetired},
		{"destroyed version", v3, "", datakey.ErrDestroyed},
		{"version never held", v9, "", datakey.ErrUnknownVersion},
		{"wrong aad", v1(), "other", datakey.ErrDecrypt},
		{"aad dropped", v1(), "", datakey.ErrDecrypt},
		{"format byte", with(ct1, 0, 0x03), "", datakey.ErrMalformed},
		{"version relabelled to another held version", with(v1(), 4, 0x01^0x04), "aad", datakey.ErrDecrypt},
		{"version relabelled to an unknown one", with(ct1, 1, 0x80), "", datakey.ErrUnknownVersion},
		{"nonce", with(ct1, 5, 0x01), "", datakey.ErrDecrypt},
		{"ciphertext body", with(ct1, 17, 0x01), "", datakey.ErrDecrypt},
		{"gcm tag", with(ct1, -1, 0x80), "", datakey.ErrDecrypt},
		{"truncated by one", ct1[:len(ct1)-1], "", datakey.ErrDecrypt},
		{"prefix only", ct1[:5], "", datakey.ErrMalformed},
		{"one byte short of the overhead", ct1[:datakey.Overhead-1], "", datakey.ErrMalformed},
		{"empty", nil, "", datakey.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := ks.Decrypt(tc.ciphertext, []byte(tc.aad))
			if tc.want == nil {
				if err != nil {
					t.Errorf("Decrypt: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || pt != nil {
				t.Errorf("Decrypt: got %q, err %v, want %v", pt, err, tc.want)
			}
		})
	}
}

// The operator's path: a version the device retired is still readable with
// the key recovered from escrow.
func TestStandalone(t *testing.T) {
	ks := keysetOf(t, 2)
	ct := mustEncrypt(t, ks, "readings", "sensor.log") // version 2
	if err := ks.Rotate(3, testKey(3, 16)); err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(2); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Decrypt(ct, []byte("sensor.log")); !errors.Is(err, datakey.ErrRetired) {
		t.Fatalf("keyset Decrypt of retired data: %v, want %v", err, datakey.ErrRetired)
	}
	v, err := datakey.VersionOf(ct)
	if err != nil || v != 2 {
		t.Fatalf("VersionOf = %d, %v, want 2", v, err)
	}
	escrowed := testKey(2, 32)
	if got, err := datakey.Decrypt(escrowed, v, ct, []byte("sensor.log")); err != nil || string(got) != "readings" {
		t.Errorf("Decrypt with the escrowed key = %q, %v, want \"readings\"", got, err)
	}
	// And the other way round: the standalone Encrypt is the keyset's format.
	c, err := datakey.Encrypt(testKey(3, 16), 3, []byte("from the server"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ks.Decrypt(c, nil); err != nil || string(got) != "from the server" {
		t.Errorf("keyset Decrypt of standalone Encrypt = %q, %v", got, err)
	}

	for _, tc := range []struct {
		name    string
		key     []byte
		version uint32
		want    error
	}{
		{"version mismatch", escrowed, 1, datakey.ErrVersionMismatch},
		{"wrong key", testKey(1, 32), 2, datakey.ErrDecrypt},
		{"wrong key size", escrowed[:24], 2, datakey.ErrKeySize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if pt, err := datakey.Decrypt(tc.key, tc.version, ct, []byte("sensor.log")); !errors.Is(err, tc.want) || pt != nil {
				t.Errorf("Decrypt: got %q, err %v, want %v", pt, err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name    string
		key     []byte
		version uint32
		want    error
	}{
		{"version 0", testKey(1, 16), 0, datakey.ErrInvalidVersion},
		{"15-byte key", testKey(1, 15), 1, datakey.ErrKeySize},
		{"24-byte key (AES-192 is not offered)", testKey(1, 24), 1, datakey.ErrKeySize},
		{"no key", nil, 1, datakey.ErrKeySize},
	} {
		t.Run("encrypt "+tc.name, func(t *testing.T) {
			if ct, err := datakey.Encrypt(tc.key, tc.version, []byte("x"), nil); !errors.Is(err, tc.want) || ct != nil {
				t.Errorf("Encrypt: got %x, err %v, want %v", ct, err, tc.want)
			}
		})
	}
}

func TestEmptyKeyset(t *testing.T) {
	var ks datakey.Keyset
	if ct, err := ks.Encrypt([]byte("x"), nil); !errors.Is(err, datakey.ErrNoPrimary) || ct != nil {
		t.Errorf("Encrypt on empty keyset: got %x, err %v, want %v", ct, err, datakey.ErrNoPrimary)
	}
	ct, err := datakey.Encrypt(testKey(1, 16), 1, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Decrypt(ct, nil); !errors.Is(err, datakey.ErrUnknownVersion) {
		t.Errorf("Decrypt on empty keyset: %v, want %v", err, datakey.ErrUnknownVersion)
	}
	if ks.PrimaryVersion() != 0 || len(ks.Versions()) != 0 {
		t.Errorf("empty keyset: primary %d, versions %v", ks.PrimaryVersion(), ks.Versions())
	}
	if got := ks.RetireBeyond(0); got != nil {
		t.Errorf("RetireBeyond on empty keyset = %v", got)
	}
}

// Every step of the life cycle, legal and illegal. Failed steps must leave
// the keyset as it was.
func TestTransitions(t *testing.T) {
	type step struct {
		name string
		do   func(*datakey.Keyset) error
		want error
		// after is the keyset's versions once the step ran.
		after string
	}
	add := func(v uint32, n int) func(*datakey.Keyset) error {
		return func(ks *datakey.Keyset) error { return ks.Add(v, testKey(v, n)) }
	}
	rotate := func(v uint32) func(*datakey.Keyset) error {
		return func(ks *datakey.Keyset) error { return ks.Rotate(v, testKey(v, 16)) }
	}
	setPrimary := func(v uint32) func(*datakey.Keyset) error {
		return func(ks *datakey.Keyset) error { return ks.SetPrimary(v) }
	}
	retire := func(v uint32) func(*datakey.Keyset) error {
		return func(ks *datakey.Keyset) error { return ks.Retire(v) }
	}
	destroy := func(v uint32) func(*datakey.Keyset) error {
		return func(ks *datakey.Keyset) error { return ks.Destroy(v) }
	}
	steps := []step{
		{"add version 0", add(0, 16), datakey.ErrInvalidVersion, ""},
		{"add a 20-byte key", add(1, 20), datakey.ErrKeySize, ""},
		{"first version is primary at once", add(2, 16), nil, "2:primary"},
		{"add an older version", add(1, 16), datakey.ErrVersionNotNewer, "2:primary"},
		{"add the same version and key again", add(2, 16), nil, "2:primary"},
		{"add the same version with another key", add(2, 32), datakey.ErrVersionNotNewer, "2:primary"},
		{"add stages a new version", add(3, 32), nil, "2:primary 3:decrypt-only"},
		{"set primary of an unknown version", setPrimary(7), datakey.ErrUnknownVersion, "2:primary 3:decrypt-only"},
		{"promote the staged version", setPrimary(3), nil, "2:decrypt-only 3:primary"},
		{"promote it again", setPrimary(3), nil, "2:decrypt-only 3:primary"},
		{"cannot retire the primary", retire(3), datakey.ErrRetirePrimary, "2:decrypt-only 3:primary"},
		{"roll back to the older version", setPrimary(2), nil, "2:primary 3:decrypt-only"},
		{"roll forward", setPrimary(3), nil, "2:decrypt-only 3:primary"},
		{"rotate", rotate(4), nil, "2:decrypt-only 3:decrypt-only 4:primary"},
		{"rotate again (redelivery)", rotate(4), nil, "2:decrypt-only 3:decrypt-only 4:primary"},
		{"stale rotate cannot roll back", rotate(3), datakey.ErrVersionNotNewer, "2:decrypt-only 3:decrypt-only 4:primary"},
		{"destroy a decrypt-only version", destroy(2), datakey.ErrIllegalTransition, "2:decrypt-only 3:decrypt-only 4:primary"},
		{"destroy the primary", destroy(4), datakey.ErrIllegalTransition, "2:decrypt-only 3:decrypt-only 4:primary"},
		{"retire", retire(2), nil, "2:retired 3:decrypt-only 4:primary"},
		{"retire again", retire(2), nil, "2:retired 3:decrypt-only 4:primary"},
		{"retire an unknown version", retire(9), datakey.ErrUnknownVersion, "2:retired 3:decrypt-only 4:primary"},
		{"promote a retired version", setPrimary(2), datakey.ErrIllegalTransition, "2:retired 3:decrypt-only 4:primary"},
		{"re-add a retired version", add(2, 16), datakey.ErrVersionNotNewer, "2:retired 3:decrypt-only 4:primary"},
		{"destroy", destroy(2), nil, "2:destroyed 3:decrypt-only 4:primary"},
		{"destroy again", destroy(2), nil, "2:destroyed 3:decrypt-only 4:primary"},
		{"destroy an unknown version", destroy(9), datakey.ErrUnknownVersion, "2:destroyed 3:decrypt-only 4:primary"},
		{"retire a destroyed version", retire(2), datakey.ErrIllegalTransition, "2:destroyed 3:decrypt-only 4:primary"},
		{"promote a destroyed version", setPrimary(2), datakey.ErrIllegalTransition, "2:destroyed 3:decrypt-only 4:primary"},
		{"re-add a destroyed version", add(2, 16), datakey.ErrVersionNotNewer, "2:destroyed 3:decrypt-only 4:primary"},
		{"a gap in versions is fine", rotate(10), nil, "2:destroyed 3:decrypt-only 4:decrypt-only 10:primary"},
		{"but not going back into it", add(7, 16), datakey.ErrVersionNotNewer, "2:destroyed 3:decrypt-only 4:decrypt-only 10:primary"},
	}
	var ks datakey.Keyset
	for _, s := range steps {
		before := ks.Versions()
		err := s.do(&ks)
		if !errors.Is(err, s.want) {
			t.Fatalf("%s: err %v, want %v", s.name, err, s.want)
		}
		if err != nil && !reflect.DeepEqual(ks.Versions(), before) {
			t.Fatalf("%s failed (%v) but changed the keyset: %v, was %v", s.name, err, ks.Versions(), before)
		}
		if got := versionsString(&ks); got != s.after {
			t.Fatalf("%s: versions %q, want %q", s.name, got, s.after)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "datakey: ") {
			t.Errorf("%s: error %q lacks the package prefix", s.name, err)
		}
	}
}

func TestRetireBeyond(t *testing.T) {
	ks := keysetOf(t, 5)
	old := mustEncrypt(t, ks, "v5", "")
	if err := ks.Rotate(6, testKey(6, 16)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		keep  int
		want  []uint32
		after string
	}{
		{10, nil, "1:decrypt-only 2:decrypt-only 3:decrypt-only 4:decrypt-only 5:decrypt-only 6:primary"},
		{5, nil, "1:decrypt-only 2:decrypt-only 3:decrypt-only 4:decrypt-only 5:decrypt-only 6:primary"},
		{3, []uint32{1, 2}, "1:retired 2:retired 3:decrypt-only 4:decrypt-only 5:decrypt-only 6:primary"},
		{3, nil, "1:retired 2:retired 3:decrypt-only 4:decrypt-only 5:decrypt-only 6:primary"},
		{1, []uint32{3, 4}, "1:retired 2:retired 3:retired 4:retired 5:decrypt-only 6:primary"},
		{-1, []uint32{5}, "1:retired 2:retired 3:retired 4:retired 5:retired 6:primary"},
		{0, nil, "1:retired 2:retired 3:retired 4:retired 5:retired 6:primary"},
	} {
		got := ks.RetireBeyond(tc.keep)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("RetireBeyond(%d) = %v, want %v", tc.keep, got, tc.want)
		}
		if s := versionsString(ks); s != tc.after {
			t.Errorf("after RetireBeyond(%d): %s, want %s", tc.keep, s, tc.after)
		}
	}
	if _, err := ks.Decrypt(old, nil); !errors.Is(err, datakey.ErrRetired) {
		t.Errorf("Decrypt of data under a retired version: %v, want %v", err, datakey.ErrRetired)
	}
	if v, _ := datakey.VersionOf(mustEncrypt(t, ks, "x", "")); v != 6 {
		t.Errorf("Encrypt after RetireBeyond(0) used version %d, want the primary 6", v)
	}
}

func TestClone(t *testing.T) {
	ks := keysetOf(t, 2)
	c := ks.Clone()
	if err := c.Rotate(3, testKey(3, 16)); err != nil {
		t.Fatal(err)
	}
	if err := c.Retire(1); err != nil {
		t.Fatal(err)
	}
	if got, want := versionsString(ks), "1:decrypt-only 2:primary"; got != want {
		t.Errorf("original after changing the clone: %s, want %s", got, want)
	}
	ct, err := datakey.Encrypt(testKey(1, 16), 1, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Decrypt(ct, nil); err != nil {
		t.Errorf("original lost version 1 when the clone retired it: %v", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	ks := keysetOf(t, 4)
	ct := mustEncrypt(t, ks, "kept across restarts", "f")
	if err := ks.Retire(1); err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(2); err != nil {
		t.Fatal(err)
	}
	if err := ks.Destroy(1); err != nil {
		t.Fatal(err)
	}
	b, err := ks.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back datakey.Keyset
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatalf("UnmarshalBinary(%x): %v", b, err)
	}
	if got, want := versionsString(&back), "1:destroyed 2:retired 3:decrypt-only 4:primary"; got != want {
		t.Errorf("versions after round trip: %s, want %s", got, want)
	}
	if got, err := back.Decrypt(ct, []byte("f")); err != nil || string(got) != "kept across restarts" {
		t.Errorf("Decrypt after round trip = %q, %v", got, err)
	}
	if b2, err := back.MarshalBinary(); err != nil || !bytes.Equal(b2, b) {
		t.Errorf("re-encoding differs: %x, was %x (err %v)", b2, b, err)
	}
	// Retired keys are wiped before they are stored: only versions 3 and 4
	// have key bytes in the file.
	if bytes.Contains(b, testKey(2, 16)) {
		t.Errorf("stored keyset %x still holds the retired version-2 key", b)
	}

	var empty datakey.Keyset
	eb, err := empty.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if want := "a2 01 01 02 80"; hex.EncodeToString(eb) != strings.ReplaceAll(want, " ", "") {
		t.Errorf("empty keyset encodes as %x, want %s", eb, want)
	}
	if err := back.UnmarshalBinary(eb); err != nil || len(back.Versions()) != 0 {
		t.Errorf("UnmarshalBinary(empty): %v, versions %v", err, back.Versions())
	}
}

// TestMarshalGolden pins the stored format, which devices keep across
// upgrades: a change here needs a new format number.
func TestMarshalGolden(t *testing.T) {
	var ks datakey.Keyset
	if err := ks.Rotate(1, testKey(1, 16)); err != nil {
		t.Fatal(err)
	}
	if err := ks.Rotate(2, testKey(2, 16)); err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(1); err != nil {
		t.Fatal(err)
	}
	b, err := ks.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := "a2" + // map(2)
		"0101" + // 1: format 1
		"02" + "82" + // 2: array(2)
		"83 01 03 40" + // [1, retired, h'']
		"83 02 01 50" + strings.Repeat("a2", 16) // [2, primary, 16-byte key]
	if got := hex.EncodeToString(b); got != strings.ReplaceAll(want, " ", "") {
		t.Errorf("MarshalBinary = %s, want %s", got, strings.ReplaceAll(want, " ", ""))
	}
}

func TestUnmarshalRejects(t *testing.T) {
	k16 := strings.Repeat("a1", 16)
	k32 := strings.Repeat("a2", 32)
	for _, tc := range []struct {
		name, hex string
	}{
		{"empty input", ""},
		{"not cbor", "ff"},
		{"not a map", "80"},
		{"format 2", "a2 0102 0280"},
		{"format missing", "a1 0280"},
		{"versions missing", "a1 0101"},
		{"versions null", "a2 0101 02f6"},
		{"unknown field", "a3 0101 0280 0300"},
		{"duplicate field", "a3 0101 0280 0280"},
		{"trailing bytes", "a2 0101 0280 00"},
		{"non-canonical length", "a2 0101 02 9800"},
		{"indefinite-length array", "a2 0101 02 9f ff"},
		{"tag", "a2 0101 02 c0 80"},
		{"two primaries", "a2 0101 02 82 830101 50" + k16 + " 830201 50" + k16},
		{"no primary", "a2 0101 02 81 830102 50" + k16},
		{"versions out of order", "a2 0101 02 82 830201 50" + k16 + " 830102 50" + k16},
		{"duplicate version", "a2 0101 02 82 830102 50" + k16 + " 830101 50" + k16},
		{"version 0", "a2 0101 02 81 830001 50" + k16},
		{"status 0 (unknown)", "a2 0101 02 81 830100 50" + k16},
		{"status 5", "a2 0101 02 81 830105 50" + k16},
		{"version over 32 bits", "a2 0101 02 81 83 1b0000000100000000 01 50" + k16},
		{"15-byte key", "a2 0101 02 81 830101 4f" + k16[2:]},
		{"primary without key", "a2 0101 02 81 830101 40"},
		{"retired with key bytes", "a2 0101 02 82 830103 50" + k16 + " 830201 5820" + k32},
		{"tombstone key null", "a2 0101 02 82 830103 f6 830201 5820" + k32},
		{"entry of two elements", "a2 0101 02 81 820101"},
		{"key as text", "a2 0101 02 81 830101 62 6162"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks := keysetOf(t, 2)
			before := ks.Versions()
			b, err := hex.DecodeString(strings.ReplaceAll(tc.hex, " ", ""))
			if err != nil {
				t.Fatalf("bad test hex: %v", err)
			}
			if err := ks.UnmarshalBinary(b); !errors.Is(err, datakey.ErrCorrupt) {
				t.Errorf("UnmarshalBinary(%x): err %v, want %v", b, err, datakey.ErrCorrupt)
			}
			if got := ks.Versions(); !reflect.DeepEqual(got, before) {
				t.Errorf("failed UnmarshalBinary changed the keyset: %v, was %v", got, before)
			}
		})
	}
	// Control: the valid neighbour of the cases above.
	var ks datakey.Keyset
	b, _ := hex.DecodeString(strings.ReplaceAll("a2 0101 02 82 830103 40 830201 5820"+k32, " ", ""))
	if err := ks.UnmarshalBinary(b); err != nil {
		t.Errorf("UnmarshalBinary(%x): %v", b, err)
	}
}

// Key bytes must not reach fmt, slog or JSON, whatever the verb or handler.
func TestRedaction(t *testing.T) {
	ks := keysetOf(t, 2) // keys 0xa1 x16 and 0xa2 x32
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		out = append(out, fmt.Sprintf(verb, ks), fmt.Sprintf(verb, *ks), fmt.Sprintf(verb, []*datakey.Keyset{ks}))
	}
	out = append(out, fmt.Sprint(ks), fmt.Sprint(*ks), ks.String(), fmt.Sprintf("%v", struct{ K datakey.Keyset }{*ks}))
	// fmt cannot call Format on a value inside an unexported field and
	// walks it by reflection instead: the key bytes must not be there.
	type holder struct {
		ks  datakey.Keyset
		ptr *datakey.Keyset
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%x", "%d"} {
		out = append(out, fmt.Sprintf(verb, holder{*ks, ks}), fmt.Sprintf(verb, []holder{{*ks, ks}}))
	}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("keys", "keyset", ks, "value", *ks)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("keys", "keyset", ks)
	out = append(out, logs.String())
	j, err := json.Marshal(ks)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(j))
	j, err = json.Marshal(struct{ K *datakey.Keyset }{ks})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(j))

	leaks := []string{
		hex.EncodeToString(testKey(1, 16)[:4]), // a1a1a1a1
		strings.ToUpper(hex.EncodeToString(testKey(2, 32)[:4])),
		hex.EncodeToString(testKey(2, 32)[:4]),
		"161 161 161", // %d of 0xa1 bytes
		"162 162 162",
		string(testKey(1, 4)), // raw bytes
		"oaGhoaGhoaGh",        // base64 of 0xa1 bytes, as JSON would write []byte
		"oqKioqKioqKi",
	}
	for _, s := range out {
		for _, leak := range leaks {
			if strings.Contains(s, leak) {
				t.Errorf("output leaks key bytes (%q): %s", leak, s)
			}
		}
	}
	if want := "datakey.Keyset{primary: 2, versions: 1:decrypt-only 2:primary}"; ks.String() != want {
		t.Errorf("String() = %q, want %q", ks.String(), want)
	}
	if !strings.Contains(logs.String(), "keyset.primary=2") || !strings.Contains(logs.String(), `"primary":2`) {
		t.Errorf("slog output lacks the primary version: %s", logs.String())
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[datakey.Status]string{
		datakey.Unknown:     "unknown",
		datakey.Primary:     "primary",
		datakey.DecryptOnly: "decrypt-only",
		datakey.Retired:     "retired",
		datakey.Destroyed:   "destroyed",
		datakey.Status(9):   "Status(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
	var zero datakey.Status
	if zero != datakey.Unknown {
		t.Errorf("zero Status is %v, want Unknown", zero)
	}
}
