package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestRoundTrip encodes one message of every type and decodes it back, bare
// and through the envelope a sender would use.
func TestRoundTrip(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	kid := keyID(t, key)
	for _, m := range examples(t) {
		typ := TypeOf(m)
		t.Run(typ.String(), func(t *testing.T) {
			first, err := c.Marshal(m)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if got := m.Hdr().V; got != Version {
				t.Errorf("Marshal set V = %d, want %d", got, Version)
			}
			if got := m.Hdr().Type; got != typ {
				t.Errorf("Marshal set Type = %v, want %v", got, typ)
			}
			back, err := c.Decode(first)
			if err != nil {
				t.Fatalf("Decode(Marshal(m)): %v", err)
			}
			if want := onWire(t, m); !reflect.DeepEqual(back, want) {
				t.Errorf("Decode(Marshal(m)) = %+v, want %+v", back, want)
			}
			second, err := c.Marshal(back)
			if err != nil {
				t.Fatalf("Marshal(Decode(...)): %v", err)
			}
			if !bytes.Equal(second, first) {
				t.Errorf("Marshal(Decode(Marshal(m))) = %x, want %x", second, first)
			}

			// The envelope the protocol prescribes for this type.
			var packet []byte
			if Signed(typ) {
				packet, err = c.Seal(m, key, "")
			} else {
				packet, err = c.Bare(m)
			}
			if err != nil {
				t.Fatalf("Seal/Bare: %v", err)
			}
			env, err := c.Open(packet)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if got, want := env.IsSigned(), Signed(typ); got != want {
				t.Errorf("IsSigned() = %v, want %v", got, want)
			}
			if Signed(typ) {
				if !bytes.Equal(env.KID, kid) {
					t.Errorf("KID = %x, want %x", env.KID, kid)
				}
				if !bytes.Equal(env.Payload, first) {
					t.Errorf("sealed payload = %x, want Marshal output %x", env.Payload, first)
				}
				if err := env.Verify(&key.PublicKey, ""); err != nil {
					t.Fatalf("Verify: %v", err)
				}
			} else {
				if env.KID != nil {
					t.Errorf("bare KID = %x, want nil", env.KID)
				}
				if !bytes.Equal(packet, first) {
					t.Errorf("Bare() = %x, want Marshal output %x", packet, first)
				}
				if err := env.Verify(&key.PublicKey, ""); !errors.Is(err, ErrUnsigned) {
					t.Errorf("Verify(bare) = %v, want %v", err, ErrUnsigned)
				}
			}
			got, err := c.Message(env)
			if err != nil {
				t.Fatalf("Message: %v", err)
			}
			if want := onWire(t, m); !reflect.DeepEqual(got, want) {
				t.Errorf("Message() = %+v, want %+v", got, want)
			}
		})
	}
}

// TestEnvelopeChoice checks that senders cannot put a type in the wrong
// envelope.
func TestEnvelopeChoice(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	for _, m := range examples(t) {
		typ := TypeOf(m)
		t.Run(typ.String(), func(t *testing.T) {
			var err error
			if Signed(typ) {
				_, err = c.Bare(m)
			} else {
				_, err = c.Seal(m, key, "")
			}
			if !errors.Is(err, ErrUnsigned) {
				t.Errorf("wrong envelope for %v: got err %v, want %v", typ, err, ErrUnsigned)
			}
		})
	}
}

// TestMarshalGolden pins the wire bytes of small messages against hex
// written by hand from docs/protocol.cddl.
func TestMarshalGolden(t *testing.T) {
	c := NewCodec()
	tests := []struct {
		name string
		m    Message
		want string
	}{
		{"rotate", &Rotate{Header: Header{ID: id(0x20), RID: id(0xa0), IAT: 1700000000, Exp: 1700086400}, Slot: SlotIdentity, Version: 4}, `
			a8                          # map(8)
			01 01                       # 1: V = 1
			02 02                       # 2: Type = rotate
			03 48 2021222324252627      # 3: ID
			04 48 a0a1a2a3a4a5a6a7      # 4: RID
			05 1a 6553f100              # 5: IAT = 1700000000
			06 1a 65554280              # 6: Exp = 1700086400
			0a 01                       # 10: Slot = identity
			0b 04                       # 11: Version = 4`},
		{"activated", &Activated{Header: Header{ID: id(0x50), RID: id(0xa0), IAT: 1700000000}, Slot: SlotIdentity, Version: 4}, `
			a7 01 01 02 05
			03 48 5051525354555657
			04 48 a0a1a2a3a4a5a6a7
			05 1a 6553f100
			0a 01 0b 04`},
		{"hello", &Hello{Header: Header{ID: id(0x10), IAT: 1700000000}, Slots: []SlotVersion{{Slot: SlotIdentity, Active: 3, Pending: 4, Previous: 2}, {Slot: 2, Active: 1}}}, `
			a5 01 01 02 01
			03 48 1011121314151617
			05 1a 6553f100
			0a 82                       # 10: Slots, array(2)
			   a4 01 01 02 03 03 04 04 02   # {1: identity, 2: active 3, 3: pending 4, 4: previous 2}
			   a2 01 02 02 01           # pending and previous 0 are omitted`},
		{"error", &Error{Header: Header{ID: id(0x70)}, Code: CodeReplay, Ref: id(0x30), Detail: "dup"}, `
			a6 01 01 02 07
			03 48 7071727374757677
			0e 03                       # 14: Code = replay
			0f 48 3031323334353637      # 15: Ref
			10 63 647570                # 16: Detail = "dup"`},
		{"delegation", &Delegation{Header: Header{ID: id(0x80)}, Key: []byte{0x30, 0x59}, NotBefore: 1700000000, NotAfter: 1700043200}, `
			a6 01 01 02 08
			03 48 8081828384858687
			11 42 3059                  # 17: Key
			12 1a 6553f100              # 18: NotBefore
			13 1a 655499c0              # 19: NotAfter = 1700043200`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Marshal(tt.m)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if want := unhex(t, tt.want); !bytes.Equal(got, want) {
				t.Errorf("Marshal = %x, want %x", got, want)
			}
		})
	}
}

// TestMarshalRefusesInvalid checks the per-type requirements that the CBOR
// schema alone does not express; Marshal and Decode share them.
func TestMarshalRefusesInvalid(t *testing.T) {
	c := NewCodec()
	iat, exp := uint64(1700000000), uint64(1700086400)
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"hello without id", &Hello{Header: Header{IAT: iat}}, ErrMissingField},
		{"hello without issued-at", &Hello{Header: Header{ID: id(1)}}, ErrMissingField},
		{"hello slot 0", &Hello{Header: Header{ID: id(1), IAT: iat}, Slots: []SlotVersion{{Active: 1}}}, ErrMissingField},
		{"hello slot twice", &Hello{Header: Header{ID: id(1), IAT: iat}, Slots: []SlotVersion{{Slot: 1, Active: 1}, {Slot: 1, Active: 2}}}, ErrMalformed},
		{"short id", &Hello{Header: Header{ID: id(1)[:7], IAT: iat}}, ErrMissingField},
		{"short rotation id", &Hello{Header: Header{ID: id(1), RID: id(2)[:4], IAT: iat}}, ErrMalformed},
		{"rotate without rotation id", &Rotate{Header: Header{ID: id(1), Exp: exp}, Slot: 1, Version: 2}, ErrMissingField},
		{"rotate without expiry", &Rotate{Header: Header{ID: id(1), RID: id(2)}, Slot: 1, Version: 2}, ErrMissingField},
		{"rotate without slot", &Rotate{Header: Header{ID: id(1), RID: id(2), Exp: exp}, Version: 2}, ErrMissingField},
		{"rotate without version", &Rotate{Header: Header{ID: id(1), RID: id(2), Exp: exp}, Slot: 1}, ErrMissingField},
		{"enroll without csr", &Enroll{Header: Header{ID: id(1), RID: id(2), IAT: iat}, Slot: 1, Version: 2}, ErrMissingField},
		{"enroll without issued-at", &Enroll{Header: Header{ID: id(1), RID: id(2)}, Slot: 1, Version: 2, CSR: []byte{1}}, ErrMissingField},
		{"enroll without rotation id", &Enroll{Header: Header{ID: id(1), IAT: iat}, Slot: 1, Version: 2, CSR: []byte{1}}, ErrMissingField},
		{"cert without cert", &Cert{Header: Header{ID: id(1), RID: id(2)}, Slot: 1, Version: 2}, ErrMissingField},
		{"cert without rotation id", &Cert{Header: Header{ID: id(1)}, Slot: 1, Version: 2, Cert: []byte{1}}, ErrMissingField},
		{"activated without issued-at", &Activated{Header: Header{ID: id(1), RID: id(2)}, Slot: 1, Version: 2}, ErrMissingField},
		{"activated without rotation id", &Activated{Header: Header{ID: id(1), IAT: iat}, Slot: 1, Version: 2}, ErrMissingField},
		{"retire without expiry", &Retire{Header: Header{ID: id(1)}, Slot: 1, Version: 2}, ErrMissingField},
		{"retire without version", &Retire{Header: Header{ID: id(1), Exp: exp}, Slot: 1}, ErrMissingField},
		{"error without code", &Error{Header: Header{ID: id(1)}}, ErrMissingField},
		{"error detail too long", &Error{Header: Header{ID: id(1)}, Code: CodeInternal, Detail: strings.Repeat("x", MaxDetailLen+1)}, ErrMalformed},
		{"delegation without key", &Delegation{Header: Header{ID: id(1)}, NotBefore: iat, NotAfter: exp}, ErrMissingField},
		{"delegation without not-before", &Delegation{Header: Header{ID: id(1)}, Key: []byte{1}, NotAfter: exp}, ErrMalformed},
		{"delegation empty validity", &Delegation{Header: Header{ID: id(1)}, Key: []byte{1}, NotBefore: iat, NotAfter: iat}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := c.Marshal(tt.m)
			if !errors.Is(err, tt.want) {
				t.Errorf("Marshal: got %x, err %v, want err %v", b, err, tt.want)
			}
		})
	}
	// Boundaries that must pass.
	ok := []Message{
		&Hello{Header: Header{ID: id(1), IAT: iat}}, // a device with no slot yet
		&Error{Header: Header{ID: id(1)}, Code: CodeInternal, Detail: strings.Repeat("x", MaxDetailLen)},
		&Retire{Header: Header{ID: id(1), Exp: exp}, Slot: 1, Version: 2}, // retire may stand outside a rotation
	}
	for _, m := range ok {
		if _, err := c.Marshal(m); err != nil {
			t.Errorf("Marshal(%+v): got err %v, want nil", m, err)
		}
	}
}

// rawCase is one packet written byte by byte, in the spirit of
// mochi-mqtt's tpackets.go, with the error a receiver must report.
type rawCase struct {
	name string
	raw  []byte
	want error // nil: the packet is valid
	// detail, when set, must appear in the error text. It pins the reason
	// where several cases share a sentinel (most are ErrMalformed).
	detail string
}

const (
	// A valid bare Cert payload that the payload cases below mutate.
	certHead = `01 01  02 04  03 48 4041424344454647  04 48 a0a1a2a3a4a5a6a7`
	certBody = `0a 01  0b 04  0d 43 308201`
	certHex  = `a7 ` + certHead + ` ` + certBody
	// A valid Rotate payload (41 bytes), signed in the envelope cases.
	rotateHex = `a8 01 01 02 02 03 48 2021222324252627 04 48 a0a1a2a3a4a5a6a7
		05 1a 6553f100 06 1a 65554280 0a 01 0b 04`
	// A valid Hello header (5 keys with the slots): the slots follow.
	helloHead = `a5 01 01 02 01 03 48 1011121314151617 05 1a 6553f100 0a`
	// A valid Error payload up to its Detail key (16).
	errorHead = `a5 01 01 02 07 03 48 7071727374757677 0e 06 10`
)

// helloSlots returns a Hello payload reporting slots 1..n.
func helloSlots(t *testing.T, n int) []byte {
	var b strings.Builder
	b.WriteString(helloHead)
	b.WriteString(cborHead(4, n))
	for s := 1; s <= n; s++ {
		b.WriteString(" a2 01" + cborHead(0, s) + " 02 01")
	}
	return unhex(t, b.String())
}

// cborHead writes the hex of a CBOR head with major type major and argument
// n (n < 65536).
func cborHead(major byte, n int) string {
	switch {
	case n < 24:
		return fmt.Sprintf(" %02x", major<<5|byte(n))
	case n < 256:
		return fmt.Sprintf(" %02x %02x", major<<5|24, n)
	default:
		return fmt.Sprintf(" %02x %04x", major<<5|25, n)
	}
}

// certOfSize returns a valid bare Cert payload of exactly size bytes.
func certOfSize(t *testing.T, size int) []byte {
	head := unhex(t, `a7 `+certHead+` 0a 01 0b 04 0d 59`) // cert: bstr with 2-byte length
	n := size - len(head) - 2
	b := append(head, byte(n>>8), byte(n))
	return append(b, bytes.Repeat([]byte{0x30}, n)...)
}

func payloadCases(t *testing.T) []rawCase {
	h := func(s string) []byte { return unhex(t, s) }
	// 26 filler pairs (keys 20..45) take the Cert map to 33 pairs.
	var filler strings.Builder
	for k := 20; k < 46; k++ {
		filler.WriteString(cborHead(0, k) + " 00")
	}
	return []rawCase{
		// Baselines: the bytes the mutations start from are valid.
		{"cert ok", h(certHex), nil, ""},
		{"hello ok", h(helloHead + ` 81 a3 01 01 02 03 03 04`), nil, ""},
		{"error ok", h(errorHead + ` 62 6f6b`), nil, ""},
		{"hello with 64 slots", helloSlots(t, 64), nil, ""},
		{"exactly MaxPacketSize", certOfSize(t, MaxPacketSize), nil, ""},
		{"non-canonical but valid: keys unsorted", h(`a7 0d 43 308201 0b 04 0a 01 ` + certHead), nil, ""},

		// CBOR-level strictness.
		{"duplicate map key", h(`a8 ` + certHead + ` 0a 01 ` + certBody), ErrMalformed, "duplicate map key"},
		{"duplicate header key", h(`a8 01 01 ` + certHead + ` ` + certBody), ErrMalformed, "duplicate map key"},
		{"indefinite-length map", h(`bf ` + certHead + ` ` + certBody + ` ff`), ErrMalformed, "indefinite-length map"},
		{"indefinite-length byte string", h(`a7 ` + certHead + ` 0a 01 0b 04 0d 5f 41 30 42 8201 ff`), ErrMalformed, "indefinite-length byte string"},
		{"tag inside payload", h(`a7 ` + certHead + ` 0a 01 0b 04 0d d8 18 43 308201`), ErrMalformed, "tag isn't allowed"},
		{"tagged payload", h(`d9 d9f7 ` + certHex), ErrMalformed, "tag isn't allowed"},
		{"unknown field key", h(`a8 ` + certHead + ` ` + certBody + ` 18 3f 00`), ErrMalformed, "unknown field"},
		{"field of another type", h(`a8 ` + certHead + ` 0a 01 0b 04 0c 41 00 0d 43 308201`), ErrMalformed, "unknown field"},
		{"text key", h(`a8 ` + certHead + ` ` + certBody + ` 61 78 00`), ErrMalformed, "unknown field"},
		{"invalid UTF-8 in Error.Detail", h(errorHead + ` 62 c328`), ErrMalformed, "invalid UTF-8"},
		{"nesting too deep", h(helloHead + ` 81 81 81 81 81 81 81 81 80`), ErrMalformed, "exceeded max nested level 8"},
		{"array over 64 elements", helloSlots(t, 65), ErrMalformed, "exceeded max number of elements 64"},
		{"map over 32 pairs", h(`b8 21 ` + certHead + ` ` + certBody + filler.String()), ErrMalformed, "exceeded max number of key-value pairs 32"},
		{"not a map", h(`87 01 04 48 4041424344454647 00 00 00 00`), ErrMalformed, ""},
		{"empty", nil, ErrMalformed, "EOF"},
		{"truncated", h(certHex)[:20], ErrMalformed, "unexpected EOF"},
		{"trailing bytes", h(certHex + ` 00`), ErrMalformed, "extraneous data"},

		// Header.
		{"wrong version", h(`a7 01 02 02 04 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrUnsupportedVersion, ""},
		{"missing version", h(`a6 02 04 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrUnsupportedVersion, ""},
		{"version overflows uint8", h(`a7 01 19 0101 02 04 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrMalformed, "overflow"},
		{"version as float", h(`a7 01 f9 3c00 02 04 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrMalformed, ""},
		{"unknown type", h(`a7 01 01 02 18 63 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrUnknownType, ""},
		{"type zero", h(`a7 01 01 02 00 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrUnknownType, ""},
		{"missing type", h(`a6 01 01 03 48 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrUnknownType, ""},
		{"missing message id", h(`a6 01 01 02 04 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrMissingField, "message id"},
		{"short message id", h(`a7 01 01 02 04 03 47 40414243444546 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrMissingField, "message id"},
		{"message id as text", h(`a7 01 01 02 04 03 68 4041424344454647 04 48 a0a1a2a3a4a5a6a7 ` + certBody), ErrMalformed, ""},
		{"short rotation id", h(`a7 01 01 02 04 03 48 4041424344454647 04 44 a0a1a2a3 ` + certBody), ErrMalformed, "rotation id"},
		{"negative version number", h(`a7 ` + certHead + ` 0a 01 0b 20 0d 43 308201`), ErrMalformed, ""},

		// Type-specific rules.
		{"empty certificate", h(`a7 ` + certHead + ` 0a 01 0b 04 0d 40`), ErrMissingField, "cert"},
		{"slot zero", h(`a7 ` + certHead + ` 0a 00 0b 04 0d 43 308201`), ErrMissingField, "slot"},
		{"hello slot reported twice", h(helloHead + ` 82 a2 01 01 02 01 a2 01 01 02 02`), ErrMalformed, "twice"},
		{"error code zero", h(`a5 01 01 02 07 03 48 7071727374757677 0e 00 10 62 6f6b`), ErrMissingField, "error code"},
		{"error detail over 200 bytes", h(errorHead + ` 78 c9 ` + strings.Repeat("61", MaxDetailLen+1)), ErrMalformed, "detail"},

		// Size.
		{"oversize", certOfSize(t, MaxPacketSize+1), ErrTooLarge, ""},
	}
}

// TestDecodeRejects feeds hand-written payloads to Decode and to the whole
// receive pipeline (as bare packets); both must give the same answer.
func TestDecodeRejects(t *testing.T) {
	c := NewCodec()
	pub := &newKey(t).PublicKey
	for _, tc := range payloadCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			m, err := c.Decode(tc.raw)
			checkRejection(t, "Decode", m, err, tc)
			if tc.want == nil && m != nil && Signed(TypeOf(m)) {
				return // a signed type: valid payload, but not a valid bare packet
			}
			m, err = receive(c, tc.raw, pub)
			checkRejection(t, "receive", m, err, tc)
		})
	}
}

func checkRejection(t *testing.T, stage string, m Message, err error, tc rawCase) {
	t.Helper()
	t.Logf("%s: err = %v", stage, err)
	switch {
	case tc.want == nil && err != nil:
		t.Errorf("%s(%x): got err %v, want nil", stage, tc.raw, err)
	case tc.want == nil:
		return
	case !errors.Is(err, tc.want):
		t.Errorf("%s(%x): got %+v, err %v, want %v", stage, tc.raw, m, err, tc.want)
	case !strings.Contains(err.Error(), tc.detail):
		t.Errorf("%s(%x): got err %q, want it to contain %q", stage, tc.raw, err, tc.detail)
	case !IsRejection(err):
		t.Errorf("%s: IsRejection(%v) = false, want true", stage, err)
	case m != nil:
		t.Errorf("%s: got message %+v with err %v, want nil", stage, m, err)
	}
}

// coseHex assembles a tagged COSE_Sign1 from hex parts; lengths of the
// byte strings are written by hand in each part.
func coseHex(protected, unprotected, payload, signature string) string {
	return "d2 84 " + protected + " " + unprotected + " " + payload + " " + signature
}

// TestEnvelopeRejects runs the receive pipeline (Open, Verify, Message) on
// envelopes that must be refused.
func TestEnvelopeRejects(t *testing.T) {
	c := NewCodec()
	key := fixedKey(t, "A")
	other := fixedKey(t, "B")
	kid := keyID(t, key)
	pub := &key.PublicKey

	h := func(s string) []byte { return unhex(t, s) }
	kidHex := fmt.Sprintf("%x", kid)
	rotatePayload := "58 29 " + rotateHex // bstr(41)
	zeroSig := "58 40 " + strings.Repeat("00", 64)
	prot := "4d a2 01 26 04 48 " + kidHex // bstr .cbor {1: -7, 4: kid}
	unprot := "a0"

	// sign1 signs payload with k into a tagged COSE_Sign1 whose kid is kid,
	// bypassing Seal's checks on the message type.
	sign1 := func(k *ecdsa.PrivateKey, kid, payload []byte) []byte {
		return signSign1WithKID(t, k, kid, payload, nil)
	}
	rotate := &Rotate{Header: Header{ID: id(0x20), RID: id(0xa0), IAT: 1700000000, Exp: 1700086400}, Slot: SlotIdentity, Version: 4}
	sealed, err := c.Seal(rotate, key, "")
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		out := bytes.Clone(b)
		out[i] ^= 0x01
		return out
	}
	idAt := bytes.Index(sealed, id(0x20))
	if idAt < 0 {
		t.Fatal("message id not found in sealed rotate")
	}
	certPayload := h(certHex)

	tests := []struct {
		rawCase
		pub *ecdsa.PublicKey // verification key; nil: pub
	}{
		{rawCase: rawCase{"sealed rotate ok", sealed, nil, ""}},
		{rawCase: rawCase{"rotate re-signed by hand ok", sign1(key, kid, h(rotateHex)), nil, ""}},
		{rawCase: rawCase{"cert bare ok", certPayload, nil, ""}},

		// Wrong envelope for the type.
		{rawCase: rawCase{"cert wrapped in COSE", sign1(key, kid, certPayload), ErrUnsigned, "cert"}},
		{rawCase: rawCase{"rotate sent bare", h(rotateHex), ErrUnsigned, "rotate"}},

		// Signatures.
		{rawCase: rawCase{"signature byte flipped", flip(sealed, len(sealed)-1), ErrBadSignature, "verification error"}},
		{rawCase: rawCase{"payload byte flipped", flip(sealed, idAt), ErrBadSignature, "verification error"}},
		{rawCase: rawCase{"verified with another key", sealed, ErrBadSignature, "kid"}, pub: &other.PublicKey},
		{rawCase: rawCase{"another key claims our kid", sign1(other, kid, h(rotateHex)), ErrBadSignature, "verification error"}},
		{rawCase: rawCase{"wrong alg in protected header (ES384)", h(coseHex("4e a2 01 38 22 04 48 "+kidHex, unprot, rotatePayload, zeroSig)), ErrBadSignature, "algorithm"}},
		{rawCase: rawCase{"wrong alg in protected header (EdDSA)", h(coseHex("4d a2 01 27 04 48 "+kidHex, unprot, rotatePayload, zeroSig)), ErrBadSignature, "algorithm"}},
		{rawCase: rawCase{"no alg (empty protected header)", h(coseHex("40", unprot, rotatePayload, zeroSig)), ErrBadSignature, "algorithm"}},
		{rawCase: rawCase{"no alg (kid only)", h(coseHex("4b a1 04 48 "+kidHex, unprot, rotatePayload, zeroSig)), ErrBadSignature, "algorithm"}},
		{rawCase: rawCase{"alg only in unprotected header", h(coseHex("40", "a2 01 26 04 48 "+kidHex, rotatePayload, zeroSig)), ErrBadSignature, "algorithm"}},
		{rawCase: rawCase{"zero signature", h(coseHex(prot, unprot, rotatePayload, zeroSig)), ErrBadSignature, ""}},
		{rawCase: rawCase{"short signature", h(coseHex(prot, unprot, rotatePayload, "58 20 "+strings.Repeat("00", 32))), ErrBadSignature, ""}},

		// Envelope shape: exactly {alg, kid} protected, nothing unprotected.
		{rawCase: rawCase{"kid missing", h(coseHex("43 a1 01 26", "a0", rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"kid in the unprotected header", h(coseHex("43 a1 01 26", "a1 04 48 "+kidHex, rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"kid in both headers", h(coseHex(prot, "a1 04 48 "+kidHex, rotatePayload, zeroSig)), ErrMalformed, "unprotected header must be empty"}},
		{rawCase: rawCase{"kid 4 bytes", h(coseHex("49 a2 01 26 04 44 00010203", "a0", rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"kid as text", h(coseHex("4d a2 01 26 04 68 6b69642d31323334", "a0", rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"protected header keys out of order", h(coseHex("4d a2 04 48 "+kidHex+" 01 26", unprot, rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"extra protected header", h(coseHex("4f a3 01 26 04 48 "+kidHex+" 03 00", unprot, rotatePayload, zeroSig)), ErrMalformed, "kid"}},
		{rawCase: rawCase{"payload length not minimal", h(coseHex(prot, unprot, "59 00 29 "+rotateHex, zeroSig)), ErrMalformed, "deterministic"}},
		{rawCase: rawCase{"detached payload", h(coseHex(prot, unprot, "f6", zeroSig)), ErrMalformed, "detached"}},
		{rawCase: rawCase{"empty signature", h(coseHex(prot, unprot, rotatePayload, "40")), ErrMalformed, "signature"}},
		{rawCase: rawCase{"three-element array", h("d2 83 " + prot + " " + unprot + " " + rotatePayload), ErrMalformed, ""}},
		{rawCase: rawCase{"indefinite-length envelope", h("d2 9f " + prot + " " + unprot + " " + rotatePayload + " " + zeroSig + " ff"), ErrMalformed, ""}},
		{rawCase: rawCase{"untagged COSE_Sign1", sealed[1:], ErrMalformed, ""}},
		{rawCase: rawCase{"COSE_Sign tag 98", h("d8 62 84 " + prot + " " + unprot + " " + rotatePayload + " " + zeroSig), ErrMalformed, "tag isn't allowed"}},
		{rawCase: rawCase{"trailing bytes after envelope", append(bytes.Clone(sealed), 0x00), ErrMalformed, "extraneous data"}},
		{rawCase: rawCase{"nesting too deep in unprotected header", h(coseHex(prot, "a1 18 63 81 81 81 81 81 81 81 80", rotatePayload, zeroSig)), ErrMalformed, "nested level"}},
		{rawCase: rawCase{"indefinite-length unprotected header", h(coseHex(prot, "bf ff", rotatePayload, zeroSig)), ErrMalformed, "indefinite-length"}},

		// Strict decoding applies inside the envelope.
		{rawCase: rawCase{"tag inside signed payload", sign1(key, kid, h(`d8 18 `+"58 29 "+rotateHex)), ErrMalformed, "tag isn't allowed"}},
		{rawCase: rawCase{"unknown field in signed payload", sign1(key, kid, h(`a9 `+rotateHex[3:]+` 18 3f 00`)), ErrMalformed, "unknown field"}},

		// Size.
		{rawCase: rawCase{"envelope over MaxPacketSize", append(bytes.Clone(sealed), make([]byte, MaxPacketSize+1-len(sealed))...), ErrTooLarge, ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pub
			if tt.pub != nil {
				p = tt.pub
			}
			m, err := receive(c, tt.raw, p)
			checkRejection(t, "receive", m, err, tt.rawCase)
		})
	}
}

// TestVerifyKeyType checks that Verify refuses keys it cannot use.
func TestVerifyKeyType(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	m := examples(t)[1]
	env, err := c.Open(encode(t, c, m, key))
	if err != nil {
		t.Fatal(err)
	}
	for _, pub := range []any{nil, "not a key", key /* private, not public */} {
		if err := env.Verify(pub, ""); !errors.Is(err, ErrBadSignature) {
			t.Errorf("Verify(%T): got err %v, want %v", pub, err, ErrBadSignature)
		}
	}
}

func TestKeyID(t *testing.T) {
	a, b := fixedKey(t, "A"), fixedKey(t, "B")
	ka, kb := keyID(t, a), keyID(t, b)
	if len(ka) != KeyIDSize {
		t.Errorf("len(KeyID) = %d, want %d", len(ka), KeyIDSize)
	}
	if bytes.Equal(ka, kb) {
		t.Errorf("KeyID(A) = KeyID(B) = %x, want different", ka)
	}
	if again := keyID(t, a); !bytes.Equal(ka, again) {
		t.Errorf("KeyID(A) = %x then %x, want stable", ka, again)
	}
	if _, err := KeyID("not a key"); err == nil {
		t.Errorf("KeyID(string): got nil err, want an error")
	}
}

func TestIsRejection(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{ErrTooLarge, true},
		{ErrMalformed, true},
		{ErrUnsupportedVersion, true},
		{ErrUnknownType, true},
		{ErrMissingField, true},
		{ErrBadSignature, true},
		{ErrUnsigned, true},
		{ErrExpired, true},
		{ErrBadDeviceID, true},
		{fmt.Errorf("context: %w", ErrMalformed), true},
		{errors.New("protocol: malformed message"), false}, // same text, not the sentinel
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsRejection(tt.err); got != tt.want {
			t.Errorf("IsRejection(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestCodecConcurrent uses one Codec from several goroutines (run with -race).
func TestCodecConcurrent(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	msgs := examples(t)
	packets := make([][]byte, len(msgs))
	for i, m := range msgs {
		packets[i] = encode(t, c, m, key)
	}
	done := make(chan error)
	for g := 0; g < 4; g++ {
		go func() {
			for i := range 20 {
				j := i % len(packets)
				if _, err := receive(c, packets[j], &key.PublicKey); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestHelloWithoutSlots: docs/protocol.cddl says key 10 of hello is an
// array. A Hello whose Slots is nil must therefore encode as the empty
// array (0x80), not as CBOR null (0xf6).
func TestHelloWithoutSlots(t *testing.T) {
	c := NewCodec()
	got, err := c.Marshal(&Hello{Header: Header{ID: id(0x10), IAT: 1700000000}})
	if err != nil {
		t.Fatal(err)
	}
	head := `a5 01 01 02 01 03 48 1011121314151617 05 1a 6553f100 0a`
	if bytes.Equal(got, unhex(t, head+` f6`)) {
		// Known bug in codec.go, reported: the encoder keeps fxamacker's
		// default NilContainers (null). Remove this skip with the fix.
		// fixed: NilContainerAsEmpty
	}
	if want := unhex(t, head+` 80`); !bytes.Equal(got, want) {
		t.Errorf("Marshal = %x, want %x", got, want)
	}
}
