package hsm_test

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyfleet/keyfleet/server/hsm"
)

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
