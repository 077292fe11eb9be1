package anchors

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fuzzseed"
	"github.com/keyfleet/keyfleet/protocol"
)

// The fuzz targets check invariants, not only the absence of panics:
//   - every error wraps one of the package's sentinels, and oversize input
//     is ErrTooLarge;
//   - accepted input is canonical: it re-encodes to the same bytes;
//   - a parsed set's accessors work, and Walk from the seed genesis either
//     refuses it with a sentinel or, since the fuzzer cannot forge
//     signatures, lands on exactly the seed that was signed.
//
// Seeds come from fuzzSeeds (f.Add) and from testdata/fuzz/<target>/,
// which `go test` also runs as plain test cases. Regenerate the corpus
// files with KEYFLEET_WRITE_FUZZ_CORPUS=1 go test -run TestFuzzCorpus ./anchors.

// fuzzFixture is a small genuine history with fixed keys: v1 is the
// current set Walk starts from, v2 revokes an id and v3 rotates the root.
func fuzzFixture(tb testing.TB) *history {
	tb.Helper()
	e1 := fixedEra(tb, "fuzz 1")
	e2 := e1
	e2.update = fixedKey(tb, "fuzz 2/update")
	e3 := fixedEra(tb, "fuzz 3")
	return newHistory(tb, e1).extend(tb, e2, kidOf(tb, e1.update)).extend(tb, e3)
}

func checkRejected(t *testing.T, what string, input []byte, err error) {
	t.Helper()
	if !isSentinel(err) {
		t.Fatalf("%s(%x): error %v (%T) wraps none of the package's sentinels", what, input, err, errors.Unwrap(err))
	}
}

func FuzzParse(f *testing.F) {
	h := fuzzFixture(f)
	for _, b := range h.raw {
		f.Add(b)
	}
	for _, tc := range rawCases(f) {
		f.Add(tc.raw)
	}
	current := h.v(1)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if s != nil {
				t.Fatalf("Parse(%x) returned v%d with err %v", data, s.Version, err)
			}
			checkRejected(t, "Parse", data, err)
			if len(data) > MaxSetSize && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Parse of %d bytes: err %v, want %v", len(data), err, ErrTooLarge)
			}
			return
		}
		if len(data) > MaxSetSize || !bytes.Equal(s.Raw, data) {
			t.Fatalf("Parse accepted %d bytes as Raw %x", len(data), s.Raw)
		}
		if err := s.validate(); err != nil {
			t.Fatalf("Parse accepted a set that Sign refuses: %v", err)
		}
		payload, err := protocol.MarshalCanonical(s.Set)
		if err != nil || !bytes.Contains(data, payload) {
			t.Fatalf("accepted %x, but its set re-encodes to %x (%v), which it does not carry", data, payload, err)
		}
		if _, err := s.SigningKeys(); err != nil {
			t.Fatalf("accepted %x, but SigningKeys: %v", data, err)
		}
		if _, err := s.FirmwarePublicKey(); err != nil {
			t.Fatalf("accepted %x, but FirmwarePublicKey: %v", data, err)
		}
		again, err := Parse(s.Raw)
		if err != nil || !reflect.DeepEqual(again.Set, s.Set) {
			t.Fatalf("Parse not stable on %x: %v", data, err)
		}

		next, err := Walk(current, [][]byte{data}, WalkOptions{})
		if err != nil {
			if next != nil {
				t.Fatalf("Walk returned v%d with err %v", next.Version, err)
			}
			checkRejected(t, "Walk", data, err)
			return
		}
		if next == current {
			if !bytes.Equal(data, current.Raw) {
				t.Fatalf("Walk took %x as the current set", data)
			}
			return
		}
		if !bytes.Equal(data, h.raw[1]) {
			t.Fatalf("Walk from v1 accepted %x, which the seed keys did not sign", data)
		}
	})
}

func FuzzDecodeChain(f *testing.F) {
	h := fuzzFixture(f)
	for _, n := range []int{1, 3} {
		b, err := EncodeChain(h.raw[:n])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, tc := range chainCases(f) {
		f.Add(tc.raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sets, err := DecodeChain(data)
		if err != nil {
			if sets != nil {
				t.Fatalf("DecodeChain(%x) returned %d entries with err %v", data, len(sets), err)
			}
			checkRejected(t, "DecodeChain", data, err)
			if len(data) > MaxChainBytes && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("DecodeChain of %d bytes: err %v, want %v", len(data), err, ErrTooLarge)
			}
			return
		}
		if len(data) > MaxChainBytes || len(sets) == 0 || len(sets) > MaxChainLen {
			t.Fatalf("DecodeChain accepted %d bytes with %d entries", len(data), len(sets))
		}
		for i, s := range sets {
			if len(s) == 0 || len(s) > MaxSetSize {
				t.Fatalf("DecodeChain accepted entry %d of %d bytes", i, len(s))
			}
		}
		again, err := EncodeChain(sets)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted %x, re-encoded %x (%v)", data, again, err)
		}
	})
}

// TestFuzzCorpus checks that the seed corpus under testdata/fuzz is
// there. With KEYFLEET_WRITE_FUZZ_CORPUS=1 it rewrites the corpus instead.
// The files are checked in, so that plain `go test` runs the fuzz bodies
// on them.
func TestFuzzCorpus(t *testing.T) {
	write := fuzzseed.New(t, "go test -run TestFuzzCorpus ./anchors").Add
	h := fuzzFixture(t)
	for i, b := range h.raw {
		write("FuzzParse", fmt.Sprintf("v%d", i+1), b)
	}
	// A few hostile cases on disk, one per layer; f.Add seeds them all,
	// and the oversize ones would only bloat the repository.
	for _, tc := range rawCases(t) {
		switch tc.name {
		case "truncated", "non-shortest length", "detached payload", "five signatures",
			"kid of 7 bytes", "duplicate map key", "indefinite-length map", "tag inside payload",
			"unknown field", "set: revoked ids unsorted", "set: root not a CA":
			write("FuzzParse", "raw-"+slug(tc.name), tc.raw)
		}
	}
	chain, err := EncodeChain(h.raw)
	if err != nil {
		t.Fatal(err)
	}
	write("FuzzDecodeChain", "chain-v1-v3", chain)
	for _, tc := range chainCases(t) {
		if len(tc.raw) <= 1024 {
			write("FuzzDecodeChain", "raw-"+slug(tc.name), tc.raw)
		}
	}
}

func slug(s string) string { return fuzzseed.Slug(s) }
