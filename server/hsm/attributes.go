package hsm

import (
	"errors"
	"fmt"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// signingKeyTemplates are the attributes of an EC signing key pair (the CA,
// update, firmware and birth-CA keys): each half can do its one job and
// nothing else, and nobody can change that later. The private key signs
// only (no decrypt, unwrap, derive or sign-recover), is sensitive, never
// extractable and not modifiable; the public key verifies only (no
// encrypt, wrap or derive) and is not modifiable either. CKA_LABEL and
// CKA_ID are both label, so either finds both halves.
//
// Without these, crypto11's template leaves the rest to the token, and
// SoftHSM2's defaults make an EC private key able to decrypt, unwrap and be
// modified: with the PIN, its attributes could be switched on later.
func signingKeyTemplates(label string) (public, private crypto11.AttributeSet, err error) {
	public, err = crypto11.NewAttributeSetWithIDAndLabel([]byte(label), []byte(label))
	if err != nil {
		return nil, nil, err
	}
	private = public.Copy()
	for _, a := range []struct {
		set  crypto11.AttributeSet
		typ  crypto11.AttributeType
		want bool
	}{
		{public, pkcs11.CKA_TOKEN, true},
		{public, pkcs11.CKA_VERIFY, true},
		{public, pkcs11.CKA_VERIFY_RECOVER, false},
		{public, pkcs11.CKA_ENCRYPT, false},
		{public, pkcs11.CKA_WRAP, false},
		{public, pkcs11.CKA_DERIVE, false},
		{public, pkcs11.CKA_MODIFIABLE, false},
		{private, pkcs11.CKA_TOKEN, true},
		{private, pkcs11.CKA_PRIVATE, true},
		{private, pkcs11.CKA_SENSITIVE, true},
		{private, pkcs11.CKA_EXTRACTABLE, false},
		{private, pkcs11.CKA_SIGN, true},
		{private, pkcs11.CKA_SIGN_RECOVER, false},
		{private, pkcs11.CKA_DECRYPT, false},
		{private, pkcs11.CKA_UNWRAP, false},
		{private, pkcs11.CKA_DERIVE, false},
		{private, pkcs11.CKA_MODIFIABLE, false},
	} {
		if err := a.set.Set(a.typ, a.want); err != nil {
			return nil, nil, err
		}
	}
	return public, private, nil
}

// KeyAttributes reads the security attributes of the private key (or, if
// there is none, the secret key) labelled object in token: whether it is sensitive and extractable. It exists so that
// tests (and operators auditing a token) can prove the keys cannot leave it.
func KeyAttributes(module, token string, pin PIN, object string) (sensitive, extractable bool, err error) {
	p := pkcs11.New(module)
	if p == nil {
		return false, false, fmt.Errorf("hsm: cannot load PKCS#11 module %s", module)
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		var pe pkcs11.Error
		if !errors.As(err, &pe) || pe != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return false, false, fmt.Errorf("hsm: initialise %s: %w", module, err)
		}
	} else {
		defer p.Finalize()
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return false, false, fmt.Errorf("hsm: list slots: %w", err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Label != token {
			continue
		}
		sess, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			return false, false, fmt.Errorf("hsm: open session: %w", err)
		}
		defer p.CloseSession(sess)
		if err := p.Login(sess, pkcs11.CKU_USER, string(pin)); err != nil {
			var pe pkcs11.Error
			if !errors.As(err, &pe) || pe != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
				return false, false, fmt.Errorf("hsm: login: %w", err)
			}
		}
		var objs []pkcs11.ObjectHandle
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_SECRET_KEY} { // a key pair's private half, or the escrow KEK
			if err := p.FindObjectsInit(sess, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, object),
			}); err != nil {
				return false, false, fmt.Errorf("hsm: find: %w", err)
			}
			objs, _, err = p.FindObjects(sess, 2)
			_ = p.FindObjectsFinal(sess)
			if err != nil {
				return false, false, fmt.Errorf("hsm: find: %w", err)
			}
			if len(objs) > 0 {
				break
			}
		}
		if len(objs) != 1 {
			return false, false, fmt.Errorf("%w: %s (%d matches)", ErrKeyNotFound, KeyURI(token, object), len(objs))
		}
		attrs, err := p.GetAttributeValue(sess, objs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		})
		if err != nil {
			return false, false, fmt.Errorf("hsm: read attributes: %w", err)
		}
		isTrue := func(v []byte) bool { return len(v) == 1 && v[0] == 1 }
		return isTrue(attrs[0].Value), isTrue(attrs[1].Value), nil
	}
	return false, false, fmt.Errorf("hsm: token %q not found", token)
}
