package firmware

import (
	"bytes"
	"errors"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fuzzseed"
	"github.com/keyfleet/keyfleet/protocol"
)

// FuzzVerify checks invariants, not only the absence of panics:
//   - every error is one of the package's rejections (IsRejection), with
//     no manifest returned;
//   - input over MaxManifestSize fails with ErrTooLarge;
//   - an accepted manifest is valid, its signed payload is exactly its
//     canonical encoding, it names the trusted key, and signing it again
//     verifies to the same manifest. The fuzzer cannot forge signatures, so
//     acceptance means the seed key signed this payload.
//
// Seeds come from verifyCases (f.Add) and from testdata/fuzz/FuzzVerify/,
// which `go test` also runs as plain test cases. Regenerate the corpus
// files with KEYFLEET_WRITE_FUZZ_CORPUS=1 go test -run TestFuzzCorpus.
func FuzzVerify(f *testing.F) {
	key := fixedKey(f, "A")
	pub := key.Public()
	kid := keyID(f, pub)
	for _, tc := range verifyCases(f) {
		f.Add(tc.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Verify(data, pub)
		if err != nil {
			if m != nil {
				t.Fatalf("Verify(%x) returned %+v with err %v", data, m, err)
			}
			if !IsRejection(err) {
				t.Fatalf("Verify(%x): error %v (%T) is not a rejection", data, err, errors.Unwrap(err))
			}
			if len(data) > MaxManifestSize && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Verify of %d bytes: err %v, want %v", len(data), err, ErrTooLarge)
			}
			return
		}
		if len(data) > MaxManifestSize {
			t.Fatalf("Verify accepted %d bytes, over MaxManifestSize", len(data))
		}
		if err := m.validate(); err != nil {
			t.Fatalf("Verify accepted an invalid manifest %+v: %v", m, err)
		}
		msg, err := openSign1(data)
		if err != nil {
			t.Fatalf("Verify accepted %x, which openSign1 refuses: %v", data, err)
		}
		if !bytes.Equal(msg.KID, kid) {
			t.Fatalf("Verify accepted kid %x, trusted %x", msg.KID, kid)
		}
		canon, err := protocol.MarshalCanonical(m.wire())
		if err != nil || !bytes.Equal(canon, msg.Payload) {
			t.Fatalf("accepted payload %x, canonical encoding of %+v is %x (err %v)", msg.Payload, m, canon, err)
		}
		if d, err := decodeSigned(data); err != nil || *d != *m {
			t.Fatalf("decodeSigned: got %+v, %v, want %+v", d, err, m)
		}
		again, err := Sign(m, key)
		if err != nil {
			t.Fatalf("accepted %+v but cannot sign it: %v", m, err)
		}
		if m2, err := Verify(again, pub); err != nil || *m2 != *m {
			t.Fatalf("re-signed manifest verifies to %+v, %v, want %+v", m2, err, m)
		}
	})
}

// TestFuzzCorpus checks that the seed corpus under testdata/fuzz is
// complete: a case added to verifyCases without its seed fails here. With
// KEYFLEET_WRITE_FUZZ_CORPUS=1 it rewrites the corpus instead. The files are
// checked in, so that plain `go test` runs the fuzz body on them.
func TestFuzzCorpus(t *testing.T) {
	corpus := fuzzseed.New(t, "go test -run TestFuzzCorpus ./firmware")
	for _, tc := range verifyCases(t) {
		name := slug(tc.name)
		if tc.want != nil {
			name = "raw-" + name
		}
		corpus.Add("FuzzVerify", name, tc.data)
	}
}

func slug(s string) string { return fuzzseed.Slug(s) }
