package firmware

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/veraison/go-cose"
)

// Identities used throughout the tests.
var (
	testVendor = UUID{0x6b, 0x65, 0x79, 0x66, 0x6c, 0x65, 0x65, 0x74, 0x2d, 0x76, 0x65, 0x6e, 0x64, 0x6f, 0x72, 0x31}
	testClass  = UUID{0x6b, 0x65, 0x79, 0x66, 0x6c, 0x65, 0x65, 0x74, 0x2d, 0x63, 0x6c, 0x61, 0x73, 0x73, 0x2d, 0x31}
	otherUUID  = UUID{0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
)

// factoryVersion is what testIdentity's devices ship with.
const factoryVersion = 3

func testIdentity() Identity {
	return Identity{VendorID: testVendor, ClassID: testClass, FactoryVersion: factoryVersion}
}

// fixedKey derives a P-256 key from a label, so that seeds signed in one
// run verify in the next.
func fixedKey(tb testing.TB, label string) *ecdsa.PrivateKey {
	tb.Helper()
	d := sha256.Sum256([]byte("keyfleet firmware test key: " + label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatalf("fixed key %q: %v", label, err)
	}
	return k
}

func keyID(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	kid, err := protocol.KeyID(pub)
	if err != nil {
		tb.Fatalf("KeyID: %v", err)
	}
	return kid
}

// testImage returns n deterministic bytes, different for each seed.
func testImage(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// testManifest describes img as version v for testIdentity's class.
func testManifest(v uint32, img []byte) *Manifest {
	return &Manifest{
		VendorID: testVendor,
		ClassID:  testClass,
		Version:  v,
		Digest:   sha256.Sum256(img),
		Size:     uint64(len(img)),
		URI:      "https://fw.example.com/keyfleet/1.img",
	}
}

func mustSign(tb testing.TB, m *Manifest, key crypto.Signer) []byte {
	tb.Helper()
	b, err := Sign(m, key)
	if err != nil {
		tb.Fatalf("Sign(%+v): %v", m, err)
	}
	return b
}

// signRaw signs payload with arbitrary headers, to build envelopes Sign
// would never produce. The signer's algorithm follows its curve.
func signRaw(tb testing.TB, payload []byte, key *ecdsa.PrivateKey, prot cose.ProtectedHeader, unprot cose.UnprotectedHeader) []byte {
	tb.Helper()
	alg := cose.AlgorithmES256
	if key.Curve == elliptic.P384() {
		alg = cose.AlgorithmES384
	}
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		tb.Fatal(err)
	}
	msg := cose.Sign1Message{Headers: cose.Headers{Protected: prot, Unprotected: unprot}, Payload: payload}
	if err := msg.Sign(rand.Reader, externalAAD, signer); err != nil {
		tb.Fatal(err)
	}
	b, err := msg.MarshalCBOR()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// snapshot returns every file under dir with its content, to check that
// refused input left the disk alone.
func snapshot(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		files[path] = string(b)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

func sameFiles(tb testing.TB, got, want map[string]string) {
	tb.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			tb.Errorf("%s: gone", p)
		} else if g != w {
			tb.Errorf("%s: changed", p)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			tb.Errorf("%s: new file", p)
		}
	}
}

// copyDir copies the files of src into a new directory, which is what a
// device finds after losing power at this instant (all writes are fsynced).
func copyDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := tb.TempDir()
	for p, content := range snapshot(tb, src) {
		rel, err := filepath.Rel(src, p)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, rel), []byte(content), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return dst
}

func openSlots(tb testing.TB, dir string) *Slots {
	tb.Helper()
	s, err := OpenSlots(dir, testIdentity())
	if err != nil {
		tb.Fatalf("OpenSlots(%s): %v", dir, err)
	}
	return s
}
