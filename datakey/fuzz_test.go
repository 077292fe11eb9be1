package datakey

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzUnmarshalBinary: the stored keyset is read back at every agent start,
// from a file a crash or a bad flash may have damaged. Whatever the bytes,
// decoding returns a clear error or a keyset that keeps its invariants and
// re-encodes to the same bytes. Seeds: valid keysets of one to three
// versions and a few damaged ones.
func FuzzUnmarshalBinary(f *testing.F) {
	for _, n := range []int{1, 2, 3} {
		ks := &Keyset{}
		for v := 1; v <= n; v++ {
			if err := ks.Rotate(uint32(v), bytes.Repeat([]byte{byte(v)}, 16)); err != nil {
				f.Fatal(err)
			}
		}
		if n == 3 {
			if err := ks.Retire(1); err != nil {
				f.Fatal(err)
			}
		}
		b, err := ks.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		d := bytes.Clone(b)
		d[len(d)-1] ^= 0xff
		f.Add(d)
	}
	f.Add([]byte{})
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ks Keyset
		if err := ks.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if ks.PrimaryVersion() == 0 && len(ks.Versions()) > 0 {
			t.Fatalf("accepted a keyset with versions and no primary: %v", ks)
		}
		b, err := ks.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted %x but cannot re-encode: %v", data, err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("accepted %x, re-encodes to %x", data, b)
		}
	})
}
