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
