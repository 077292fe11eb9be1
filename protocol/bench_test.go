package protocol

import (
	"testing"
)

// Benchmarks of the hot paths: the server decodes and verifies enrolls and
// seals commands; devices do the reverse. Sizes are those of
// TestMessageSizes (realistic CSR).

func enrollExample(b *testing.B) *Enroll {
	b.Helper()
	for _, m := range examples(b) {
		if e, ok := m.(*Enroll); ok {
			return e
		}
	}
	b.Fatal("no enroll example")
	return nil
}

func BenchmarkMarshalEnroll(b *testing.B) {
	c := NewCodec()
	m := enrollExample(b)
	out, err := c.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(out)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Marshal(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEnroll(b *testing.B) {
	c := NewCodec()
	payload, err := c.Marshal(enrollExample(b))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Decode(payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSealRotate(b *testing.B) {
	c := NewCodec()
	key := newKey(b)
	m := &Rotate{Header: Header{ID: id(0x20), RID: id(0xa0), IAT: 1700000000, Exp: 1700086400}, Slot: SlotIdentity, Version: 4}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Seal(m, key, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenVerifyEnroll(b *testing.B) {
	c := NewCodec()
	key := newKey(b)
	packet := encode(b, c, enrollExample(b), key)
	b.SetBytes(int64(len(packet)))
	b.ReportAllocs()
	for b.Loop() {
		env, err := c.Open(packet)
		if err != nil {
			b.Fatal(err)
		}
		if err := env.Verify(&key.PublicKey, ""); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Message(env); err != nil {
			b.Fatal(err)
		}
	}
}
