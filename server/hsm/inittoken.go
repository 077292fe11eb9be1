package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// InitToken initialises a fresh token labelled label in the first slot that
// has no initialised token (SoftHSM2 always keeps one free), sets its SO and
// user PINs, and returns. It fails if a token with that label exists.
//
// This is a provisioning step (fleetd init with SoftHSM2, tests, the
// simulator); a production HSM is initialised by its own tools.
func InitToken(module, label string, soPIN, userPIN PIN) error {
	p := pkcs11.New(module)
	if p == nil {
		return fmt.Errorf("hsm: cannot load PKCS#11 module %s", module)
	}
	defer p.Destroy()
	mine := true
	if err := p.Initialize(); err != nil {
		var pe pkcs11.Error
		if !errors.As(err, &pe) || pe != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return fmt.Errorf("hsm: initialise %s: %w", module, err)
		}
		mine = false // another user in this process holds it; leave it initialised
	}
	if mine {
		defer p.Finalize()
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: list slots: %w", err)
	}
	var free []uint
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return fmt.Errorf("hsm: token info of slot %d: %w", s, err)
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			free = append(free, s)
			continue
		}
		if ti.Label == label {
			return fmt.Errorf("hsm: token %q already exists", label)
		}
	}
	if len(free) == 0 {
		return errors.New("hsm: no free slot to initialise a token in")
	}
	slot := free[0]
	if err := p.InitToken(slot, string(soPIN), label); err != nil {
		return fmt.Errorf("hsm: init token %q: %w", label, err)
	}
	// SoftHSM2 moves an initialised token to a new slot id: find it again.
	slots, err = p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: list slots: %w", err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && ti.Label == label {
			slot = s
			break
		}
	}
	sess, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: open session on %q: %w", label, err)
	}
	defer p.CloseSession(sess)
	if err := p.Login(sess, pkcs11.CKU_SO, string(soPIN)); err != nil {
		return fmt.Errorf("hsm: SO login to %q: %w", label, err)
	}
	defer p.Logout(sess)
	if err := p.InitPIN(sess, string(userPIN)); err != nil {
		return fmt.Errorf("hsm: set user PIN of %q: %w", label, err)
	}
	return nil
}

// KeyAttributes reads the security attributes of the private key labelled
// object in token: whether it is sensitive and extractable. It exists so that
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
		if err := p.FindObjectsInit(sess, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, object),
		}); err != nil {
			return false, false, fmt.Errorf("hsm: find: %w", err)
		}
		objs, _, err := p.FindObjects(sess, 2)
		_ = p.FindObjectsFinal(sess)
		if err != nil {
			return false, false, fmt.Errorf("hsm: find: %w", err)
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
