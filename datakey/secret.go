package datakey

import (
	"bytes"
	"fmt"
	"log/slog"
)

// redacted is what every textual form of key material shows.
const redacted = "[redacted]"

// secret holds key material and hides it from every generic printer:
// fmt (all verbs, %#v included), slog and text or JSON encoders, like
// Tink's secretdata.Bytes and our hsm.PIN. The bytes sit in an unexported
// field so that reflection-based encoders (encoding/json, CBOR, gob) see
// nothing either.
//
// fmt does not call methods on values it reaches through unexported
// fields, so the methods alone cannot protect a Keyset printed with %v.
// Two more layers cover that: the Keyset redacts itself (Keyset.Format),
// and the bytes hang off a pointer, which fmt prints as an address when it
// finds one nested inside a value (say, a Keyset in an unexported field of
// the caller's struct) instead of following it.
type secret struct{ p *[]byte }

// newSecret copies b, so that the caller may wipe or reuse its slice. An
// empty b gives the empty secret of a retired version.
func newSecret(b []byte) secret {
	if len(b) == 0 {
		return secret{}
	}
	c := bytes.Clone(b)
	return secret{p: &c}
}

// bytes returns the key material, nil for the empty secret.
func (s secret) bytes() []byte {
	if s.p == nil {
		return nil
	}
	return *s.p
}

// wipe zeroes the key bytes and drops them. Copies of the secret share
// the bytes, so they see zeros too: copy a Keyset with Clone, not by
// assignment.
func (s *secret) wipe() {
	if s.p != nil {
		clear(*s.p)
		s.p = nil
	}
}

// String hides the key.
func (secret) String() string { return redacted }

// GoString hides the key from %#v.
func (secret) GoString() string { return "datakey.secret(" + redacted + ")" }

// Format hides the key from every fmt verb, including %x and %d, which
// would otherwise print the bytes of a byte-slice type.
func (s secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprint(f, redacted)
}

// LogValue hides the key from slog.
func (secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText hides the key from encoding/json and other text encoders.
func (secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
