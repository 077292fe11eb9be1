package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fuzzseed"
)

// The fuzz targets check invariants, not only the absence of panics:
//   - every error is one of the package's sentinels (IsRejection);
//   - a decoded message re-encodes, and the re-encoding decodes to an equal
//     message and re-encodes to the same bytes;
//   - an envelope that verifies under the seed key carries a valid message,
//     since the fuzzer cannot forge signatures.
//
// Seeds come from examples() (f.Add) and from testdata/fuzz/<target>/,
// which `go test` also runs as plain test cases. Regenerate the corpus files
// with KEYFLEET_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus.

// normalized returns a copy of m in which empty slices are nil: CBOR has
// no nil, so "absent", "null" and "empty" decode to either and compare equal.
func normalized(m Message) Message {
	v := reflect.New(reflect.TypeOf(m).Elem())
	v.Elem().Set(reflect.ValueOf(m).Elem())
	normalize(v.Elem())
	return v.Interface().(Message)
}

func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				normalize(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := range c.Len() {
			normalize(c.Index(i))
		}
		v.Set(c)
	}
}

// checkRoundTrip asserts the invariants of a message that was accepted.
func checkRoundTrip(t *testing.T, c *Codec, m Message, input []byte) {
	t.Helper()
	typ := TypeOf(m)
	h := m.Hdr()
	if typ == TypeUnknown || h.Type != typ || h.V != Version {
		t.Fatalf("accepted %x as %T with V=%d Type=%v", input, m, h.V, h.Type)
	}
	before := normalized(m)
	b, err := c.Marshal(m)
	if err != nil {
		t.Fatalf("accepted %x but cannot re-encode %+v: %v", input, m, err)
	}
	if !reflect.DeepEqual(normalized(m), before) {
		t.Fatalf("Marshal changed the message: %+v, was %+v", m, before)
	}
	m2, err := c.Decode(b)
	if err != nil {
		t.Fatalf("accepted %x, re-encoded %x, which Decode refuses: %v", input, b, err)
	}
	if !reflect.DeepEqual(normalized(m2), before) {
		t.Fatalf("accepted %x as %+v, re-encoded %x, decoded back %+v", input, before, b, m2)
	}
	b2, err := c.Marshal(m2)
	if err != nil || !bytes.Equal(b2, b) {
		t.Fatalf("re-encoding not stable: %x, then %x (err %v)", b, b2, err)
	}
}

func checkRejected(t *testing.T, what string, input []byte, err error) {
	t.Helper()
	if !IsRejection(err) {
		t.Fatalf("%s(%x): error %v (%T) is none of the package's sentinels", what, input, err, errors.Unwrap(err))
	}
}

func FuzzDecode(f *testing.F) {
	c := NewCodec()
	for _, m := range examples(f) {
		b, err := c.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := c.Decode(data)
		if err != nil {
			if m != nil {
				t.Fatalf("Decode(%x) returned %+v with err %v", data, m, err)
			}
			checkRejected(t, "Decode", data, err)
			if len(data) > MaxPacketSize && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Decode of %d bytes: err %v, want %v", len(data), err, ErrTooLarge)
			}
			return
		}
		if len(data) > MaxPacketSize {
			t.Fatalf("Decode accepted %d bytes, over MaxPacketSize", len(data))
		}
		checkRoundTrip(t, c, m, data)
	})
}

func FuzzOpen(f *testing.F) {
	c := NewCodec()
	key := fixedKey(f, "A")
	pub := &key.PublicKey
	for _, m := range examples(f) {
		f.Add(encode(f, c, m, key))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := c.Open(data)
		if err != nil {
			if env != nil {
				t.Fatalf("Open(%x) returned an envelope with err %v", data, err)
			}
			checkRejected(t, "Open", data, err)
			return
		}
		if len(data) > MaxPacketSize {
			t.Fatalf("Open accepted %d bytes, over MaxPacketSize", len(data))
		}
		if env.IsSigned() {
			if len(env.KID) != KeyIDSize || env.Payload == nil {
				t.Fatalf("signed envelope with kid %x, payload %x", env.KID, env.Payload)
			}
		} else if env.KID != nil || !bytes.Equal(env.Payload, data) {
			t.Fatalf("bare envelope with kid %x, payload %x, want nil and the packet", env.KID, env.Payload)
		}

		verr := env.Verify(pub, "")
		if verr != nil {
			checkRejected(t, "Verify", data, verr)
		}
		if !env.IsSigned() && !errors.Is(verr, ErrUnsigned) {
			t.Fatalf("Verify of a bare packet: err %v, want %v", verr, ErrUnsigned)
		}

		m, err := c.Message(env)
		if err != nil {
			if m != nil {
				t.Fatalf("Message returned %+v with err %v", m, err)
			}
			checkRejected(t, "Message", data, err)
			// Everything the seed key signed is a valid message; a
			// verified envelope may only fail for being signed at all.
			if verr == nil && !errors.Is(err, ErrUnsigned) {
				t.Fatalf("envelope verified under the seed key, but Message: %v", err)
			}
			return
		}
		if got, want := env.IsSigned(), Signed(TypeOf(m)); got != want {
			t.Fatalf("Message accepted %v with IsSigned %v, want %v", TypeOf(m), got, want)
		}
		checkRoundTrip(t, c, m, env.Payload)
	})
}

// TestFuzzCorpus checks that the seed corpus under testdata/fuzz is
// complete: a message type added without its seeds fails here. With
// KEYFLEET_WRITE_FUZZ_CORPUS=1 it rewrites the corpus instead. The files are
// checked in, so that plain `go test` runs the fuzz bodies on them.
func TestFuzzCorpus(t *testing.T) {
	corpus := fuzzseed.New(t, "go test -run TestFuzzCorpus ./protocol")
	c := NewCodec()
	key := fixedKey(t, "A")
	for _, m := range examples(t) {
		b, err := c.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		corpus.Add("FuzzDecode", TypeOf(m).String(), b)
		corpus.Add("FuzzOpen", TypeOf(m).String(), encode(t, c, m, key))
	}
	for _, tc := range payloadCases(t) {
		switch tc.name {
		case "duplicate map key", "indefinite-length map", "tag inside payload",
			"invalid UTF-8 in Error.Detail", "nesting too deep", "hello with 64 slots":
			corpus.Add("FuzzDecode", "raw-"+fuzzseed.Slug(tc.name), tc.raw)
		}
	}
	full, err := MarshalCanonical(&Cert{Header: Header{V: Version, Type: TypeCert, ID: id(0x40), RID: id(0xa0)},
		Slot: SlotIdentity, Version: 4, Cert: realisticMaterial(t).cert})
	if err != nil {
		t.Fatal(err)
	}
	corpus.Add("FuzzDecode", "raw-cert-with-its-key", full)
	kid := fmt.Sprintf("%x", keyID(t, key))
	zeroSig := "58 40 " + strings.Repeat("00", 64)
	corpus.Add("FuzzOpen", "raw-wrong-alg", unhex(t, coseHex("4e a2 01 38 22 04 48 "+kid, "a0", "58 29 "+rotateHex, zeroSig)))
	corpus.Add("FuzzOpen", "raw-kid-unprotected", unhex(t, coseHex("43 a1 01 26", "a1 04 48 "+kid, "58 29 "+rotateHex, zeroSig)))
	corpus.Add("FuzzOpen", "raw-kid-in-both-headers", unhex(t, coseHex("4d a2 01 26 04 48 "+kid, "a1 04 48 "+kid, "58 29 "+rotateHex, zeroSig)))
	corpus.Add("FuzzOpen", "raw-payload-length-not-minimal", unhex(t, coseHex("4d a2 01 26 04 48 "+kid, "a0", "59 00 29 "+rotateHex, zeroSig)))
	corpus.Add("FuzzOpen", "raw-rotate-bare", unhex(t, rotateHex))
}
