package hsm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyfleet/keyfleet/server/hsm"
)

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
