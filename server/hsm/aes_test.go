package hsm_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// dataKeyStore is the data-key half of what Token and SoftKeys both offer.
type dataKeyStore interface {
	GenerateKEK(label string) error
	HasKEK(label string) (bool, error)
	NewDataKey(kek string, size int) (key, wrapped []byte, err error)
	UnwrapDataKey(kek string, wrapped []byte) ([]byte, error)
	Ops() uint64
}

var (
	_ dataKeyStore = (*hsm.Token)(nil)
	_ dataKeyStore = (*hsm.SoftKeys)(nil)
)

func dataKeyBackends() []struct {
	name string
	open func(t *testing.T) dataKeyStore
} {
	return []struct {
		name string
		open func(t *testing.T) dataKeyStore
	}{
		{"pkcs11", func(t *testing.T) dataKeyStore { tok, _ := openToken(t); return tok }},
		{"soft", func(t *testing.T) dataKeyStore { s, _ := openSoft(t); return s }},
	}
}

// rawP11 is a test's own PKCS#11 session on a token, to check from the
// outside what Token did: attributes, object counts, mechanisms.
type rawP11 struct {
	p    *pkcs11.Ctx
	s    pkcs11.SessionHandle
	slot uint
}

// openRaw opens a session on cfg's token. Open the Token first: the cleanup
// then runs before the Token's Close, and the module stays initialised by
// crypto11, which this session must not finalise.
func openRaw(t *testing.T, cfg hsm.Config) *rawP11 {
	t.Helper()
	p := pkcs11.New(cfg.Module)
	if p == nil {
		t.Fatalf("load %s: failed", cfg.Module)
	}
	owner := true
	if err := p.Initialize(); err != nil {
		var pe pkcs11.Error
		if !errors.As(err, &pe) || pe != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			p.Destroy()
			t.Fatalf("C_Initialize: %v", err)
		}
		owner = false
	}
	r := &rawP11{p: p}
	t.Cleanup(func() {
		if r.s != 0 {
			p.CloseSession(r.s)
		}
		if owner {
			p.Finalize()
		}
		p.Destroy()
	})
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatalf("C_GetSlotList: %v", err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == cfg.TokenLabel {
			r.slot = s
			r.s, err = p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
			if err != nil {
				t.Fatalf("C_OpenSession: %v", err)
			}
			if err := p.Login(r.s, pkcs11.CKU_USER, string(cfg.PIN)); err != nil {
				var pe pkcs11.Error
				if !errors.As(err, &pe) || pe != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
					t.Fatalf("C_Login: %v", err)
				}
			}
			return r
		}
	}
	t.Fatalf("token %q not found", cfg.TokenLabel)
	return nil
}

// count counts the objects matching tmpl (nil: every object the session
// sees, token and session objects alike).
func (r *rawP11) count(t *testing.T, tmpl []*pkcs11.Attribute) int {
	t.Helper()
	if err := r.p.FindObjectsInit(r.s, tmpl); err != nil {
		t.Fatalf("C_FindObjectsInit: %v", err)
	}
	defer r.p.FindObjectsFinal(r.s)
	n := 0
	for {
		objs, _, err := r.p.FindObjects(r.s, 100)
		if err != nil {
			t.Fatalf("C_FindObjects: %v", err)
		}
		if len(objs) == 0 {
			return n
		}
		n += len(objs)
	}
}

func (r *rawP11) findOne(t *testing.T, class uint, label string) pkcs11.ObjectHandle {
	t.Helper()
	if err := r.p.FindObjectsInit(r.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}); err != nil {
		t.Fatalf("C_FindObjectsInit: %v", err)
	}
	objs, _, err := r.p.FindObjects(r.s, 2)
	r.p.FindObjectsFinal(r.s)
	if err != nil || len(objs) != 1 {
		t.Fatalf("find %q: got %d objects and error %v, want one", label, len(objs), err)
	}
	return objs[0]
}

// createAES stores a known AES key as a token object that can wrap, unwrap
// and be read: a test-only KEK, never what GenerateKEK makes.
func (r *rawP11) createAES(t *testing.T, label string, value []byte) pkcs11.ObjectHandle {
	t.Helper()
	h, err := r.p.CreateObject(r.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	})
	if err != nil {
		t.Fatalf("C_CreateObject(%s): %v", label, err)
	}
	return h
}

// TestSoftHSMKeyWrapPad records what this SoftHSM2 offers for RFC 5649 and
// checks its CKM_AES_KEY_WRAP_PAD output byte for byte against WrapPad,
// with the RFC 5649 section 6 KEK, for the RFC's keys and for keys of the
// data-key sizes.
//
// SoftHSM2 2.6 zero-pads a key to a multiple of 8 bytes before it wraps it
// with RFC 5649, so for the RFC's 20- and 7-octet keys its blob is the RFC
// 5649 wrap of the zero-padded key (MLI 24 and 8), not the RFC's vector.
// The test pins that quirk: if a SoftHSM2 update fixes it, the test says
// so. Keys of 8-byte multiples, which data keys are, come out exact.
func TestSoftHSMKeyWrapPad(t *testing.T) {
	_, cfg := openToken(t)
	r := openRaw(t, cfg)
	mechs, err := r.p.GetMechanismList(r.slot)
	if err != nil {
		t.Fatalf("C_GetMechanismList: %v", err)
	}
	have := map[uint]bool{}
	for _, m := range mechs {
		have[m.Mechanism] = true
	}
	for _, m := range []struct {
		mech  uint
		name  string
		flags uint
	}{
		{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", pkcs11.CKF_GENERATE},
		{pkcs11.CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP", pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP},
		{pkcs11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD", pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP},
	} {
		if !have[m.mech] {
			t.Errorf("mechanism list: %s missing", m.name)
			continue
		}
		mi, err := r.p.GetMechanismInfo(r.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)})
		if err != nil {
			t.Fatalf("C_GetMechanismInfo(%s): %v", m.name, err)
		}
		t.Logf("%s: key sizes %d..%d, flags %#x", m.name, mi.MinKeySize, mi.MaxKeySize, mi.Flags)
		if mi.Flags&m.flags != m.flags {
			t.Errorf("%s flags: got %#x, want %#x set", m.name, mi.Flags, m.flags)
		}
	}
	t.Logf("CKM_AES_KEY_WRAP_KWP (0x210B) offered: %v", have[0x210B])

	kekValue := unhex(t, rfc5649KEK)
	kek := r.createAES(t, "rfc5649-kek", kekValue)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	secret := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	}
	type wrapCase struct {
		name     string
		key      []byte
		softhsm  []byte // what SoftHSM2 2.6 unwraps it to
		rfc5649  []byte // the RFC's vector, if any
		wantSame bool   // SoftHSM2's blob is RFC 5649's
	}
	var cases []wrapCase
	for _, v := range rfc5649Vectors {
		key := unhex(t, v.key)
		padded := append(bytes.Clone(key), make([]byte, (8-len(key)%8)%8)...)
		cases = append(cases, wrapCase{"RFC " + v.name, key, padded, unhex(t, v.wrap), false})
	}
	for _, n := range []int{hsm.DataKey128, hsm.DataKey256} {
		key := make([]byte, n)
		rand.Read(key)
		cases = append(cases, wrapCase{fmt.Sprintf("%d bytes", n), key, key, nil, true})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// AES keys are 16, 24 or 32 bytes: the keys go in as generic
			// secrets, so that the RFC's odd lengths can too.
			tmpl := append(slices.Clone(secret), pkcs11.NewAttribute(pkcs11.CKA_VALUE, tc.key))
			obj, err := r.p.CreateObject(r.s, tmpl)
			if err != nil {
				t.Fatalf("C_CreateObject: %v", err)
			}
			defer r.p.DestroyObject(r.s, obj)
			got, err := r.p.WrapKey(r.s, mech, kek, obj)
			if err != nil {
				t.Fatalf("C_WrapKey: got error %v, want nil", err)
			}
			rfc, err := hsm.WrapPad(kekValue, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if tc.rfc5649 != nil && !bytes.Equal(rfc, tc.rfc5649) {
				t.Fatalf("WrapPad: got %x, want RFC 5649's %x", rfc, tc.rfc5649)
			}
			if same := bytes.Equal(got, rfc); same != tc.wantSame {
				t.Errorf("C_WrapKey = RFC 5649 wrap: got %v, want %v (SoftHSM2 2.6 pads keys to 8 bytes first; has it changed?)", same, tc.wantSame)
			}
			soft, err := hsm.WrapPad(kekValue, tc.softhsm)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, soft) {
				t.Fatalf("C_WrapKey: got %x, want WrapPad of the key as SoftHSM2 2.6 pads it, %x", got, soft)
			}
			back, err := r.p.UnwrapKey(r.s, mech, kek, got, secret)
			if err != nil {
				t.Fatalf("C_UnwrapKey: got error %v, want nil", err)
			}
			defer r.p.DestroyObject(r.s, back)
			attrs, err := r.p.GetAttributeValue(r.s, back, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err != nil {
				t.Fatalf("read unwrapped value: %v", err)
			}
			if !bytes.Equal(attrs[0].Value, tc.softhsm) {
				t.Fatalf("C_UnwrapKey: got %x, want %x", attrs[0].Value, tc.softhsm)
			}
			if tc.rfc5649 != nil {
				// SoftHSM2 unwraps the RFC's own vector right.
				h, err := r.p.UnwrapKey(r.s, mech, kek, tc.rfc5649, secret)
				if err != nil {
					t.Fatalf("C_UnwrapKey of the RFC vector: got error %v, want nil", err)
				}
				defer r.p.DestroyObject(r.s, h)
				attrs, err := r.p.GetAttributeValue(r.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
				if err != nil || !bytes.Equal(attrs[0].Value, tc.key) {
					t.Fatalf("C_UnwrapKey of the RFC vector: got (%x, %v), want %x", attrs[0].Value, err, tc.key)
				}
			}
		})
	}
}

// TestDataKeyCrossCheck runs Token's wrap and unwrap against the software
// WrapPad and UnwrapPad, under a test-only KEK of known value created in the
// token, in both directions.
func TestDataKeyCrossCheck(t *testing.T) {
	tok, cfg := openToken(t)
	r := openRaw(t, cfg)
	kekValue := make([]byte, 32)
	rand.Read(kekValue)
	r.createAES(t, "known", kekValue)
	for _, size := range []int{hsm.DataKey128, hsm.DataKey256} {
		t.Run(fmt.Sprintf("token to soft %d", size), func(t *testing.T) {
			key, wrapped, err := tok.NewDataKey("known", size)
			if err != nil {
				t.Fatalf("NewDataKey: got error %v, want nil", err)
			}
			got, err := hsm.UnwrapPad(kekValue, wrapped)
			if err != nil {
				t.Fatalf("UnwrapPad of the token's blob: got error %v, want nil", err)
			}
			if !bytes.Equal(got, key) {
				t.Fatal("UnwrapPad of the token's blob: got another key, want NewDataKey's")
			}
			// The algorithm is deterministic: same key, same blob.
			again, err := hsm.WrapPad(kekValue, key)
			if err != nil || !bytes.Equal(again, wrapped) {
				t.Fatalf("WrapPad of the same key: got (%x, %v), want the token's blob %x", again, err, wrapped)
			}
		})
		t.Run(fmt.Sprintf("soft to token %d", size), func(t *testing.T) {
			key := make([]byte, size)
			rand.Read(key)
			wrapped, err := hsm.WrapPad(kekValue, key)
			if err != nil {
				t.Fatalf("WrapPad: got error %v, want nil", err)
			}
			got, err := tok.UnwrapDataKey("known", wrapped)
			if err != nil {
				t.Fatalf("UnwrapDataKey of WrapPad's blob: got error %v, want nil", err)
			}
			if !bytes.Equal(got, key) {
				t.Fatal("UnwrapDataKey of WrapPad's blob: got another key, want the wrapped one")
			}
		})
	}
	t.Run("odd length refused", func(t *testing.T) {
		// A valid RFC 5649 blob of a 24-byte key under the right KEK is
		// not a data key NewDataKey could have made.
		wrapped, err := hsm.WrapPad(kekValue, make([]byte, 24))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tok.UnwrapDataKey("known", wrapped); !errors.Is(err, hsm.ErrUnwrap) {
			t.Fatalf("UnwrapDataKey of a wrapped 24-byte key: got %v, want ErrUnwrap", err)
		}
	})
}

// TestKEKAttributes reads the generated KEK back over raw PKCS#11: an
// AES-256 token key that is sensitive, never extractable, wrap/unwrap only,
// unmodifiable, and whose value cannot be read.
func TestKEKAttributes(t *testing.T) {
	tok, cfg := openToken(t)
	if err := tok.GenerateKEK("escrow"); err != nil {
		t.Fatalf("GenerateKEK: got error %v, want nil", err)
	}
	r := openRaw(t, cfg)
	h := r.findOne(t, pkcs11.CKO_SECRET_KEY, "escrow")
	bools := []struct {
		name string
		attr uint
		want bool
	}{
		{"CKA_TOKEN", pkcs11.CKA_TOKEN, true},
		{"CKA_PRIVATE", pkcs11.CKA_PRIVATE, true},
		{"CKA_SENSITIVE", pkcs11.CKA_SENSITIVE, true},
		{"CKA_ALWAYS_SENSITIVE", pkcs11.CKA_ALWAYS_SENSITIVE, true},
		{"CKA_EXTRACTABLE", pkcs11.CKA_EXTRACTABLE, false},
		{"CKA_NEVER_EXTRACTABLE", pkcs11.CKA_NEVER_EXTRACTABLE, true},
		{"CKA_MODIFIABLE", pkcs11.CKA_MODIFIABLE, false},
		{"CKA_WRAP", pkcs11.CKA_WRAP, true},
		{"CKA_UNWRAP", pkcs11.CKA_UNWRAP, true},
		{"CKA_ENCRYPT", pkcs11.CKA_ENCRYPT, false},
		{"CKA_DECRYPT", pkcs11.CKA_DECRYPT, false},
		{"CKA_SIGN", pkcs11.CKA_SIGN, false},
		{"CKA_VERIFY", pkcs11.CKA_VERIFY, false},
		{"CKA_DERIVE", pkcs11.CKA_DERIVE, false},
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
	}
	for _, b := range bools {
		tmpl = append(tmpl, pkcs11.NewAttribute(b.attr, nil))
	}
	attrs, err := r.p.GetAttributeValue(r.s, h, tmpl)
	if err != nil {
		t.Fatalf("C_GetAttributeValue: %v", err)
	}
	ulong := func(v []byte) uint64 {
		var n uint64
		for i := len(v) - 1; i >= 0; i-- { // little-endian CK_ULONG
			n = n<<8 | uint64(v[i])
		}
		return n
	}
	if got := ulong(attrs[0].Value); got != pkcs11.CKK_AES {
		t.Errorf("CKA_KEY_TYPE: got %#x, want CKK_AES", got)
	}
	if got := ulong(attrs[1].Value); got != hsm.KEKSize {
		t.Errorf("CKA_VALUE_LEN: got %d, want %d", got, hsm.KEKSize)
	}
	if got := string(attrs[2].Value); got != "escrow" {
		t.Errorf("CKA_ID: got %q, want %q", got, "escrow")
	}
	for i, b := range bools {
		v := attrs[3+i].Value
		if got := len(v) == 1 && v[0] == 1; got != b.want {
			t.Errorf("%s: got %v, want %v", b.name, got, b.want)
		}
	}
	if _, err := r.p.GetAttributeValue(r.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
		t.Error("reading CKA_VALUE of the KEK: got nil error, want CKR_ATTRIBUTE_SENSITIVE")
	}
	if err := r.p.EncryptInit(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, h); err == nil {
		t.Error("C_EncryptInit with the KEK: got nil error, want the key to refuse encryption")
	}
	if err := r.p.SetAttributeValue(r.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}); err == nil {
		t.Error("setting CKA_DECRYPT on the KEK: got nil error, want a refusal")
	}
}

func TestGenerateKEK(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if has, err := ks.HasKEK("escrow"); err != nil || has {
				t.Fatalf("HasKEK before GenerateKEK: got (%v, %v), want (false, nil)", has, err)
			}
			if err := ks.GenerateKEK("escrow"); err != nil {
				t.Fatalf("GenerateKEK: got error %v, want nil", err)
			}
			if has, err := ks.HasKEK("escrow"); err != nil || !has {
				t.Fatalf("HasKEK after GenerateKEK: got (%v, %v), want (true, nil)", has, err)
			}
			key, wrapped, err := ks.NewDataKey("escrow", hsm.DataKey256)
			if err != nil {
				t.Fatalf("NewDataKey: got error %v, want nil", err)
			}
			if err := ks.GenerateKEK("escrow"); !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("second GenerateKEK: got error %v, want ErrKeyExists", err)
			}
			// The refused second call left the first KEK in place.
			got, err := ks.UnwrapDataKey("escrow", wrapped)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("UnwrapDataKey after a refused GenerateKEK: got error %v or another key, want the key", err)
			}
			for _, label := range []string{"escro", "escrow2", "ESCROW"} {
				if has, err := ks.HasKEK(label); err != nil || has {
					t.Errorf("HasKEK(%q): got (%v, %v), want (false, nil)", label, has, err)
				}
			}
			if err := ks.GenerateKEK(""); err == nil {
				t.Error("GenerateKEK(\"\"): got nil error, want one")
			}
		})
	}
}

// TestGenerateKEKNames: a secret key that carries the label as its CKA_ID
// blocks GenerateKEK like one that carries it as CKA_LABEL; a key pair of
// the same name does not (its URI has type=private, the KEK's
// type=secret-key), and both stay usable.
func TestGenerateKEKNames(t *testing.T) {
	tok, cfg := openToken(t)
	r := openRaw(t, cfg)
	h := r.createAES(t, "other", make([]byte, 32))
	if err := r.p.SetAttributeValue(r.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, []byte("escrow"))}); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKEK("escrow"); !errors.Is(err, hsm.ErrKeyExists) {
		t.Errorf("GenerateKEK over a secret key with that CKA_ID: got %v, want ErrKeyExists", err)
	}
	if _, err := tok.GenerateP256("ca"); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKEK("ca"); err != nil {
		t.Fatalf("GenerateKEK named like a key pair: got error %v, want nil", err)
	}
	s, err := tok.Signer("ca")
	if err != nil {
		t.Fatalf("Signer after a KEK of the same name: got error %v, want nil", err)
	}
	checkSigns(t, s, p256Public(t, s), "next to a KEK")
	if _, _, err := tok.NewDataKey("ca", hsm.DataKey128); err != nil {
		t.Fatalf("NewDataKey under a KEK named like a key pair: got error %v, want nil", err)
	}
}

func TestDataKeyRoundTrip(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			for _, l := range []string{"kek-a", "kek-b"} {
				if err := ks.GenerateKEK(l); err != nil {
					t.Fatalf("GenerateKEK(%q): got error %v, want nil", l, err)
				}
			}
			seen := map[string]bool{}
			for _, size := range []int{hsm.DataKey128, hsm.DataKey256} {
				t.Run(fmt.Sprint(size), func(t *testing.T) {
					key, wrapped, err := ks.NewDataKey("kek-a", size)
					if err != nil {
						t.Fatalf("NewDataKey: got error %v, want nil", err)
					}
					if len(key) != size {
						t.Fatalf("key length: got %d, want %d", len(key), size)
					}
					if want := size + 8; len(wrapped) != want {
						t.Fatalf("wrapped length: got %d, want %d", len(wrapped), want)
					}
					if bytes.Contains(wrapped, key) {
						t.Fatal("wrapped blob contains the key in plaintext")
					}
					if seen[string(key)] {
						t.Fatal("NewDataKey returned a key it returned before")
					}
					seen[string(key)] = true
					got, err := ks.UnwrapDataKey("kek-a", wrapped)
					if err != nil {
						t.Fatalf("UnwrapDataKey: got error %v, want nil", err)
					}
					if !bytes.Equal(got, key) {
						t.Fatal("UnwrapDataKey: got another key, want NewDataKey's")
					}

					if got, err := ks.UnwrapDataKey("kek-b", wrapped); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
						t.Errorf("UnwrapDataKey under another KEK: got (%d bytes, %v), want (nil, ErrUnwrap)", len(got), err)
					}
					for _, i := range []int{0, 7, 8, len(wrapped) / 2, len(wrapped) - 1} {
						bad := bytes.Clone(wrapped)
						bad[i] ^= 0x80
						if got, err := ks.UnwrapDataKey("kek-a", bad); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
							t.Errorf("UnwrapDataKey with byte %d flipped: got (%d bytes, %v), want (nil, ErrUnwrap)", i, len(got), err)
						}
					}
					for _, bad := range [][]byte{nil, wrapped[:len(wrapped)-8], wrapped[:len(wrapped)-1], append(bytes.Clone(wrapped), 0)} {
						if got, err := ks.UnwrapDataKey("kek-a", bad); !errors.Is(err, hsm.ErrUnwrap) || got != nil {
							t.Errorf("UnwrapDataKey of %d bytes: got (%d bytes, %v), want (nil, ErrUnwrap)", len(bad), len(got), err)
						}
					}
					if _, err := ks.UnwrapDataKey("nope", wrapped); !errors.Is(err, hsm.ErrKeyNotFound) {
						t.Errorf("UnwrapDataKey under an unknown KEK: got %v, want ErrKeyNotFound", err)
					}
				})
			}
			for _, size := range []int{0, 8, 15, 24, 33, 64, -1} {
				if k, w, err := ks.NewDataKey("kek-a", size); err == nil || k != nil || w != nil {
					t.Errorf("NewDataKey(size %d): got error %v, want one and no key", size, err)
				}
			}
			if _, _, err := ks.NewDataKey("nope", hsm.DataKey128); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("NewDataKey under an unknown KEK: got %v, want ErrKeyNotFound", err)
			}
		})
	}
}

// TestDataKeyErrorsKeepSecrets: no error text carries key material.
func TestDataKeyErrorsKeepSecrets(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if err := ks.GenerateKEK("k"); err != nil {
				t.Fatal(err)
			}
			key, wrapped, err := ks.NewDataKey("k", hsm.DataKey128)
			if err != nil {
				t.Fatal(err)
			}
			bad := bytes.Clone(wrapped)
			bad[3] ^= 1
			_, err = ks.UnwrapDataKey("k", bad)
			if err == nil {
				t.Fatal("UnwrapDataKey of a damaged blob: got nil error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "hsm: ") {
				t.Errorf("error: got %q, want the prefix %q", msg, "hsm: ")
			}
			for _, secret := range [][]byte{key, bad, wrapped} {
				if strings.Contains(msg, fmt.Sprintf("%x", secret)) || strings.Contains(msg, string(secret)) {
					t.Errorf("error %q contains key material", msg)
				}
			}
		})
	}
}

func TestDataKeyOps(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if err := ks.GenerateKEK("k"); err != nil {
				t.Fatal(err)
			}
			if got := ks.Ops(); got != 0 {
				t.Fatalf("Ops after GenerateKEK: got %d, want 0", got)
			}
			if _, err := ks.HasKEK("k"); err != nil {
				t.Fatal(err)
			}
			_, w, err := ks.NewDataKey("k", hsm.DataKey128)
			if err != nil {
				t.Fatal(err)
			}
			if got := ks.Ops(); got != 1 {
				t.Fatalf("Ops after NewDataKey: got %d, want 1", got)
			}
			if _, err := ks.UnwrapDataKey("k", w); err != nil {
				t.Fatal(err)
			}
			if got := ks.Ops(); got != 2 {
				t.Fatalf("Ops after UnwrapDataKey: got %d, want 2", got)
			}
			// Refused before the KEK is used: not an HSM operation.
			ks.NewDataKey("k", 7)
			ks.NewDataKey("missing", hsm.DataKey128)
			ks.UnwrapDataKey("k", w[:3])
			if got := ks.Ops(); got != 2 {
				t.Fatalf("Ops after refused calls: got %d, want 2", got)
			}
		})
	}
}

// TestDataKeysLeaveNoObjects counts every object the token shows a session
// of this process (token objects and session objects) before and after
// data keys are made and unwrapped: the transient keys are destroyed.
func TestDataKeysLeaveNoObjects(t *testing.T) {
	tok, cfg := openToken(t)
	if err := tok.GenerateKEK("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateP256("ca"); err != nil {
		t.Fatal(err)
	}
	r := openRaw(t, cfg)
	tokenObjs := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	beforeAll, beforeToken := r.count(t, nil), r.count(t, tokenObjs)
	if beforeToken != 3 {
		t.Fatalf("token objects: got %d, want 3 (KEK and a key pair)", beforeToken)
	}
	for i := 0; i < 10; i++ {
		_, w, err := tok.NewDataKey("k", hsm.DataKey256)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tok.UnwrapDataKey("k", w); err != nil {
			t.Fatal(err)
		}
		w[5] ^= 1
		if _, err := tok.UnwrapDataKey("k", w); !errors.Is(err, hsm.ErrUnwrap) {
			t.Fatalf("damaged blob: got %v, want ErrUnwrap", err)
		}
	}
	if got := r.count(t, tokenObjs); got != beforeToken {
		t.Errorf("token objects after data keys: got %d, want %d", got, beforeToken)
	}
	if got := r.count(t, nil); got != beforeAll {
		t.Errorf("all objects after data keys: got %d, want %d", got, beforeAll)
	}
}

// TestDataKeysConcurrent makes and unwraps data keys from many goroutines
// at once (run it with -race), more than the Token's data-key sessions.
func TestDataKeysConcurrent(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if err := ks.GenerateKEK("k"); err != nil {
				t.Fatal(err)
			}
			const workers, each = 12, 15
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						size := hsm.DataKey128
						if i%2 == 1 {
							size = hsm.DataKey256
						}
						key, wrapped, err := ks.NewDataKey("k", size)
						if err != nil {
							errs <- err
							return
						}
						got, err := ks.UnwrapDataKey("k", wrapped)
						if err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(got, key) {
							errs <- errors.New("unwrapped another key")
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got, want := ks.Ops(), uint64(2*workers*each); got != want {
				t.Errorf("Ops: got %d, want %d", got, want)
			}
		})
	}
}

// TestDataKeysCloseAndShare: two Tokens on one token share the module; the
// first one's Close (which closes its data-key sessions) must leave the
// second one, its signatures and its data keys working; a closed Token
// refuses data keys with ErrClosed instead of crashing.
func TestDataKeysCloseAndShare(t *testing.T) {
	cfg := fleettest.NewToken(t)
	a, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.GenerateKEK("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GenerateP256("ca"); err != nil {
		t.Fatal(err)
	}
	_, wa, err := a.NewDataKey("k", hsm.DataKey128)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, err := b.NewDataKey("k", hsm.DataKey128); err != nil {
		t.Fatalf("NewDataKey on the second Token: got error %v, want nil", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: got error %v, want nil", err)
	}
	if _, _, err := a.NewDataKey("k", hsm.DataKey128); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("NewDataKey after Close: got %v, want ErrClosed", err)
	}
	if _, err := a.UnwrapDataKey("k", wa); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("UnwrapDataKey after Close: got %v, want ErrClosed", err)
	}
	if _, err := b.UnwrapDataKey("k", wa); err != nil {
		t.Fatalf("UnwrapDataKey on the second Token after the first closed: got error %v, want nil", err)
	}
	s, err := b.Signer("ca")
	if err != nil {
		t.Fatalf("Signer on the second Token: got error %v, want nil", err)
	}
	checkSigns(t, s, p256Public(t, s), "after the other Token closed")
}

// TestDataKeysCloseWhileBusy closes a Token while goroutines use data keys:
// each call either works or fails with ErrClosed, and the module is usable
// by a new Token afterwards.
func TestDataKeysCloseWhileBusy(t *testing.T) {
	cfg := fleettest.NewToken(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKEK("k"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < 50; i++ {
				_, _, err := tok.NewDataKey("k", hsm.DataKey128)
				if errors.Is(err, hsm.ErrClosed) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	close(start)
	if err := tok.Close(); err != nil {
		t.Errorf("Close while busy: got error %v, want nil", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("NewDataKey racing Close: got error %v, want nil or ErrClosed", err)
	}
	again, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("Open after Close: got error %v, want nil", err)
	}
	defer again.Close()
	if _, _, err := again.NewDataKey("k", hsm.DataKey256); err != nil {
		t.Fatalf("NewDataKey on a new Token: got error %v, want nil", err)
	}
}

func TestSoftKEKFile(t *testing.T) {
	s, dir := openSoft(t)
	if err := s.GenerateKEK("escrow"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "escrow.kek")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("KEK file: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("KEK file mode: got %v, want 0600", got)
	}
	if fi.Size() != hsm.KEKSize {
		t.Errorf("KEK file size: got %d, want %d", fi.Size(), hsm.KEKSize)
	}
	kek, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key, wrapped, err := s.NewDataKey("escrow", hsm.DataKey128)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := hsm.UnwrapPad(kek, wrapped); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("UnwrapPad with the file's KEK: got error %v or another key, want the data key", err)
	}
	// A re-opened store finds the KEK.
	s2, err := hsm.OpenSoftKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.UnwrapDataKey("escrow", wrapped); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("UnwrapDataKey after re-open: got error %v or another key, want the data key", err)
	}
	for _, label := range []string{"../escrow", "a/b", ".", ".."} {
		if err := s.GenerateKEK(label); err == nil {
			t.Errorf("GenerateKEK(%q): got nil error, want one", label)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "short.kek"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.NewDataKey("short", hsm.DataKey128); err == nil || errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("NewDataKey under a short KEK file: got %v, want an error other than ErrKeyNotFound", err)
	}
}

func benchDataKeys(b *testing.B) *hsm.Token {
	b.Helper()
	cfg := fleettest.NewToken(b)
	tok, err := hsm.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tok.Close() })
	if err := tok.GenerateKEK("bench"); err != nil {
		b.Fatal(err)
	}
	return tok
}

// BenchmarkTokenNewDataKey: one escrowed AES-256 data key (generate, wrap,
// read, destroy) in SoftHSM2, from parallel callers.
func BenchmarkTokenNewDataKey(b *testing.B) {
	tok := benchDataKeys(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := tok.NewDataKey("bench", hsm.DataKey256); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTokenUnwrapDataKey: one escrow recovery (unwrap, read, destroy).
func BenchmarkTokenUnwrapDataKey(b *testing.B) {
	tok := benchDataKeys(b)
	_, w, err := tok.NewDataKey("bench", hsm.DataKey256)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tok.UnwrapDataKey("bench", w); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkWrapPad is the software twin, for scale.
func BenchmarkWrapPad(b *testing.B) {
	kek, key := make([]byte, 32), make([]byte, 32)
	for b.Loop() {
		if _, err := hsm.WrapPad(kek, key); err != nil {
			b.Fatal(err)
		}
	}
}
