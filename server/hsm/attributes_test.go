package hsm_test

import (
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// TestDeploymentKeysNonExtractable is the acceptance check: the private keys
// of a deployment made by server.Init, read back over PKCS#11, are sensitive
// and not extractable.
func TestDeploymentKeysNonExtractable(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	cfg := f.Config.HSM
	for _, label := range []string{trust.LabelCA, trust.LabelUpdate} {
		t.Run(label, func(t *testing.T) {
			sensitive, extractable, err := hsm.KeyAttributes(cfg.Module, cfg.TokenLabel, cfg.PIN, label)
			if err != nil {
				t.Fatalf("KeyAttributes(%s): got error %v, want nil", hsm.KeyURI(cfg.TokenLabel, label), err)
			}
			if !sensitive {
				t.Errorf("CKA_SENSITIVE of %s: got false, want true", hsm.KeyURI(cfg.TokenLabel, label))
			}
			if extractable {
				t.Errorf("CKA_EXTRACTABLE of %s: got true, want false", hsm.KeyURI(cfg.TokenLabel, label))
			}
		})
	}
	t.Run("exactly one key per label", func(t *testing.T) {
		// Init generates each key once; a second private key under the same
		// label would make Signer ambiguous.
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatalf("Open: got error %v, want nil", err)
		}
		defer tok.Close()
		for _, label := range []string{trust.LabelCA, trust.LabelUpdate} {
			if _, err := tok.Signer(label); err != nil {
				t.Errorf("Signer(%q): got error %v, want nil", label, err)
			}
		}
	})
}

// boolAttr is one boolean attribute a key must carry.
type boolAttr struct {
	name string
	typ  uint
	want bool
}

// signingPrivate and signingPublic are what an EC signing key's halves
// must read back as: each can do its one job, nothing else, and cannot be
// changed to do more.
var (
	signingPrivate = []boolAttr{
		{"CKA_SIGN", pkcs11.CKA_SIGN, true},
		{"CKA_DECRYPT", pkcs11.CKA_DECRYPT, false},
		{"CKA_UNWRAP", pkcs11.CKA_UNWRAP, false},
		{"CKA_DERIVE", pkcs11.CKA_DERIVE, false},
		{"CKA_SIGN_RECOVER", pkcs11.CKA_SIGN_RECOVER, false},
		{"CKA_MODIFIABLE", pkcs11.CKA_MODIFIABLE, false},
		{"CKA_SENSITIVE", pkcs11.CKA_SENSITIVE, true},
		{"CKA_EXTRACTABLE", pkcs11.CKA_EXTRACTABLE, false},
		{"CKA_NEVER_EXTRACTABLE", pkcs11.CKA_NEVER_EXTRACTABLE, true},
		{"CKA_PRIVATE", pkcs11.CKA_PRIVATE, true},
		{"CKA_TOKEN", pkcs11.CKA_TOKEN, true},
	}
	signingPublic = []boolAttr{
		{"CKA_VERIFY", pkcs11.CKA_VERIFY, true},
		{"CKA_ENCRYPT", pkcs11.CKA_ENCRYPT, false},
		{"CKA_WRAP", pkcs11.CKA_WRAP, false},
		{"CKA_DERIVE", pkcs11.CKA_DERIVE, false},
		{"CKA_VERIFY_RECOVER", pkcs11.CKA_VERIFY_RECOVER, false},
		{"CKA_MODIFIABLE", pkcs11.CKA_MODIFIABLE, false},
	}
	kekAttrs = []boolAttr{
		{"CKA_WRAP", pkcs11.CKA_WRAP, true},
		{"CKA_UNWRAP", pkcs11.CKA_UNWRAP, true},
		{"CKA_ENCRYPT", pkcs11.CKA_ENCRYPT, false},
		{"CKA_DECRYPT", pkcs11.CKA_DECRYPT, false},
		{"CKA_SIGN", pkcs11.CKA_SIGN, false},
		{"CKA_MODIFIABLE", pkcs11.CKA_MODIFIABLE, false},
		{"CKA_EXTRACTABLE", pkcs11.CKA_EXTRACTABLE, false},
	}
)

// checkAttrs reads the attributes of the object of class labelled label
// over raw PKCS#11 and compares them with want.
func checkAttrs(t *testing.T, r *rawP11, class uint, label string, want []boolAttr) {
	t.Helper()
	h := r.findOne(t, class, label)
	tmpl := make([]*pkcs11.Attribute, len(want))
	for i, a := range want {
		tmpl[i] = pkcs11.NewAttribute(a.typ, nil)
	}
	got, err := r.p.GetAttributeValue(r.s, h, tmpl)
	if err != nil {
		t.Fatalf("C_GetAttributeValue of %s: %v", label, err)
	}
	for i, a := range want {
		v := got[i].Value
		if b := len(v) == 1 && v[0] == 1; b != a.want {
			t.Errorf("%s of %s: got %v, want %v", a.name, label, b, a.want)
		}
	}
}

// TestSigningKeyAttributes: a key made by GenerateP256 reads back over
// PKCS#11 as sign-only (private) and verify-only (public), neither
// modifiable; and the token refuses to switch decryption on later.
func TestSigningKeyAttributes(t *testing.T) {
	tok, cfg := openToken(t)
	if _, err := tok.GenerateP256("ca"); err != nil {
		t.Fatalf("GenerateP256: %v", err)
	}
	r := openRaw(t, cfg)
	checkAttrs(t, r, pkcs11.CKO_PRIVATE_KEY, "ca", signingPrivate)
	checkAttrs(t, r, pkcs11.CKO_PUBLIC_KEY, "ca", signingPublic)
	h := r.findOne(t, pkcs11.CKO_PRIVATE_KEY, "ca")
	if err := r.p.SetAttributeValue(r.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}); err == nil {
		t.Error("setting CKA_DECRYPT on the signing key: got nil error, want a refusal")
	}
}

// TestDeploymentKeyUsage is the acceptance check for a whole deployment:
// every signing key server.Init makes (CA, update, firmware, birth CA)
// reads back sign-only and not modifiable, and the escrow KEK wrap/unwrap
// only.
func TestDeploymentKeyUsage(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	r := openRaw(t, f.Config.HSM)
	for _, label := range []string{trust.LabelCA, trust.LabelUpdate, trust.LabelFirmware, trust.LabelBirthCA} {
		t.Run(label, func(t *testing.T) {
			checkAttrs(t, r, pkcs11.CKO_PRIVATE_KEY, label, signingPrivate)
			checkAttrs(t, r, pkcs11.CKO_PUBLIC_KEY, label, signingPublic)
		})
	}
	t.Run(escrow.KEKLabel, func(t *testing.T) {
		checkAttrs(t, r, pkcs11.CKO_SECRET_KEY, escrow.KEKLabel, kekAttrs)
	})
}
