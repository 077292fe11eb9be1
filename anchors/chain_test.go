package anchors

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
)

func TestChainRoundTrip(t *testing.T) {
	h := fourSets(t)
	b, err := EncodeChain(h.raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeChain(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, h.raw, bytes.Equal) {
		t.Fatalf("got %d entries, want the 4 sets", len(got))
	}
	next, err := Walk(h.v(1), got, WalkOptions{})
	if err != nil || !bytes.Equal(next.Raw, h.raw[3]) {
		t.Fatalf("walk the decoded chain: got %s, %v; want v4", describe(next), err)
	}
}

type chainCase struct {
	name    string
	raw     []byte
	wantErr error
	detail  string
}

// chainCases are chain encodings, valid and hostile, for TestDecodeChain
// and the fuzz seeds. The entries need not be valid sets: DecodeChain
// does not parse them.
func chainCases(tb testing.TB) []chainCase {
	tb.Helper()
	entry := bytes.Repeat([]byte{0xab}, 100)
	enc := func(sets [][]byte) []byte {
		b, err := protocol.MarshalCanonical(sets)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	two := enc([][]byte{entry, entry})
	return []chainCase{
		{"two entries", two, nil, ""},
		{"one entry", enc([][]byte{entry}), nil, ""},
		{"MaxChainLen entries", enc(slices.Repeat([][]byte{{1}}, MaxChainLen)), nil, ""},
		{"entry of MaxSetSize", enc([][]byte{make([]byte, MaxSetSize)}), nil, ""},

		{"empty input", nil, ErrMalformed, "EOF"},
		{"empty array", []byte{0x80}, ErrMalformed, "0 entries"},
		{"over MaxChainLen entries", enc(slices.Repeat([][]byte{{1}}, MaxChainLen+1)), ErrMalformed, "entries"},
		{"over the decoder's array cap", enc(slices.Repeat([][]byte{{1}}, 65)), ErrMalformed, "max number of elements"},
		{"over MaxChainBytes", enc(slices.Repeat([][]byte{make([]byte, MaxSetSize)}, MaxChainBytes/MaxSetSize)), ErrTooLarge, "bytes, max"},
		{"entry over MaxSetSize", enc([][]byte{make([]byte, MaxSetSize+1)}), ErrTooLarge, "entry 0"},
		{"empty entry", []byte{0x82, 0x41, 0x00, 0x40}, ErrMalformed, "entry 1 is empty"},
		{"null entry", []byte{0x81, 0xf6}, ErrMalformed, "entry 0 is empty"},
		{"not an array", []byte{0xa1, 0x01, 0x41, 0x00}, ErrMalformed, "cannot unmarshal"},
		{"entry not a byte string", []byte{0x82, 0x41, 0x00, 0x01}, ErrMalformed, "cannot unmarshal"},
		{"entry of text", []byte{0x81, 0x61, 0x61}, ErrMalformed, "cannot unmarshal"},
		{"indefinite-length array", append(append([]byte{0x9f}, two[1:]...), 0xff), ErrMalformed, "indefinite-length array"},
		{"indefinite-length entry", []byte{0x81, 0x5f, 0x41, 0x00, 0xff}, ErrMalformed, "indefinite-length byte string"},
		{"tagged chain", append([]byte{0xd8, 0x18}, two...), ErrMalformed, "tag"},
		{"tagged entry", []byte{0x81, 0xd8, 0x18, 0x41, 0x00}, ErrMalformed, "tag"},
		{"nested array", []byte{0x81, 0x81, 0x41, 0x00}, ErrMalformed, "cannot unmarshal"},
		{"trailing byte", append(slices.Clone(two), 0x00), ErrMalformed, "extraneous data"},
		{"truncated", two[:len(two)-1], ErrMalformed, "unexpected EOF"},
		{"non-shortest array head", append([]byte{0x98, 0x02}, two[1:]...), ErrMalformed, "core deterministic"},
	}
}

func TestDecodeChain(t *testing.T) {
	for _, tc := range chainCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeChain(tc.raw)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("got err %v, want nil", err)
				}
				if again, err := EncodeChain(got); err != nil || !bytes.Equal(again, tc.raw) {
					t.Fatalf("EncodeChain(DecodeChain(x)) = %x, %v; want x = %x", again, err, tc.raw)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || got != nil {
				t.Fatalf("got %d entries, err %v; want nil, %v", len(got), err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("got err %q, want it to contain %q", err, tc.detail)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestEncodeChainRefuses(t *testing.T) {
	tests := []struct {
		name    string
		sets    [][]byte
		wantErr error
	}{
		{"no sets", nil, ErrMalformed},
		{"an empty set", [][]byte{{1}, {}}, ErrMalformed},
		{"too many sets", slices.Repeat([][]byte{{1}}, MaxChainLen+1), ErrMalformed},
		{"a set over MaxSetSize", [][]byte{make([]byte, MaxSetSize+1)}, ErrTooLarge},
		{"over MaxChainBytes", slices.Repeat([][]byte{make([]byte, MaxSetSize)}, MaxChainBytes/MaxSetSize), ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := EncodeChain(tc.sets); !errors.Is(err, tc.wantErr) || b != nil {
				t.Fatalf("got %d bytes, err %v; want nil, %v", len(b), err, tc.wantErr)
			}
		})
	}
}
