package hsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// ErrClosed: the Token was closed.
var ErrClosed = errors.New("hsm: token closed")

// rawSessions bounds the PKCS#11 sessions a Token opens for data keys, on
// top of crypto11's pool. Data keys are made and unwrapped once per device
// rotation or escrow recovery, far less often than signatures, and SoftHSM2
// serialises much of its work anyway; four sessions keep a few rotations in
// flight without eating into a hardware HSM's session limit.
const rawSessions = 4

// rawToken is a Token's own connection to its PKCS#11 module, for what
// crypto11 cannot do (AES key generation, wrap and unwrap); crypto11 does
// not expose its sessions.
//
// Life cycle: nothing is loaded until the first data-key call, so a Token
// that only signs never opens it. The module is then loaded a second time
// (dlopen shares the library, and so its state, with crypto11's handle) and
// C_Initialize is called; crypto11, opened earlier by the same Token, has
// already initialised the library, so the call answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED, which is expected. In that case close
// never calls C_Finalize: the library belongs to crypto11, which finalises
// it when its last Context closes. Only if the call succeeded (nobody had
// initialised the library, which a Token whose crypto11 Context is open
// should never see) does close finalise it. close also never calls
// C_CloseAllSessions or C_Logout, which act on every session of the process
// including crypto11's: it closes its own sessions one by one. Token.Close
// closes the rawToken before crypto11's Context, so that the library is
// still initialised while these sessions close.
//
// It is safe for concurrent use.
type rawToken struct {
	module string
	label  string
	pin    PIN

	// life is held shared by every operation and exclusively by close, so
	// close waits for operations in flight and later ones see closed.
	life   sync.RWMutex
	closed bool

	initMu sync.Mutex // guards the lazy start below
	p      *pkcs11.Ctx
	slot   uint
	mech   uint // RFC 5649 wrap mechanism: see wrapMechs
	owner  bool // this rawToken's C_Initialize succeeded: it must finalise

	sem  chan struct{}             // one token per session in use
	idle chan pkcs11.SessionHandle // sessions ready for reuse
}

func newRawToken(cfg Config) *rawToken {
	return &rawToken{
		module: cfg.Module,
		label:  cfg.TokenLabel,
		pin:    cfg.PIN,
		sem:    make(chan struct{}, rawSessions),
		idle:   make(chan pkcs11.SessionHandle, rawSessions),
	}
}

// isCKR reports whether err is the PKCS#11 return value rv.
func isCKR(err error, rv ...uint) bool {
	var pe pkcs11.Error
	if !errors.As(err, &pe) {
		return false
	}
	for _, r := range rv {
		if uint(pe) == r {
			return true
		}
	}
	return false
}

// start loads and initialises the module on first use and finds the slot.
func (r *rawToken) start() (*pkcs11.Ctx, error) {
	r.initMu.Lock()
	defer r.initMu.Unlock()
	if r.p != nil {
		return r.p, nil
	}
	p := pkcs11.New(r.module)
	if p == nil {
		return nil, fmt.Errorf("hsm: cannot load PKCS#11 module %s", r.module)
	}
	owner := true
	if err := p.Initialize(); err != nil {
		if !isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			p.Destroy()
			return nil, fmt.Errorf("hsm: initialise %s: %w", r.module, err)
		}
		owner = false // crypto11's: never finalise it
	}
	slot, mech, err := r.findSlot(p)
	if err != nil {
		if owner {
			_ = p.Finalize()
		}
		p.Destroy()
		return nil, err
	}
	r.p, r.slot, r.mech, r.owner = p, slot, mech, owner
	return p, nil
}

// findSlot finds the token by label, as crypto11 does, and picks the wrap
// mechanism (see wrapMechs). A token without AES key generation or RFC 5649
// wrapping fails here, with a message that names the missing mechanism.
func (r *rawToken) findSlot(p *pkcs11.Ctx) (slot, mech uint, err error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, 0, fmt.Errorf("hsm: list slots: %w", err)
	}
	offers := func(s, mech, flags uint) bool {
		mi, err := p.GetMechanismInfo(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)})
		return err == nil && mi.Flags&flags == flags
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Label != r.label {
			continue
		}
		if !offers(s, pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE) {
			return 0, 0, fmt.Errorf("hsm: token %q does not offer CKM_AES_KEY_GEN", r.label)
		}
		for _, m := range wrapMechs {
			if offers(s, m, pkcs11.CKF_WRAP|pkcs11.CKF_UNWRAP) {
				return s, m, nil
			}
		}
		return 0, 0, fmt.Errorf("hsm: token %q offers neither CKM_AES_KEY_WRAP_KWP nor CKM_AES_KEY_WRAP_PAD for wrap and unwrap", r.label)
	}
	return 0, 0, fmt.Errorf("hsm: token %q not found", r.label)
}

// openSession opens a read-write session and makes sure the token is logged
// in. Login state is per token and process in PKCS#11: crypto11's session
// usually has logged in already, hence CKR_USER_ALREADY_LOGGED_IN is fine.
func (r *rawToken) openSession(p *pkcs11.Ctx) (pkcs11.SessionHandle, error) {
	s, err := p.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, fmt.Errorf("hsm: open session on %q: %w", r.label, err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, string(r.pin)); err != nil && !isCKR(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		_ = p.CloseSession(s)
		return 0, fmt.Errorf("hsm: login to %q: %w", r.label, err)
	}
	return s, nil
}

// rawSession is a session lent to one operation.
type rawSession struct {
	*pkcs11.Ctx
	s pkcs11.SessionHandle
	// drop asks for the session to be closed instead of reused: a session
	// object could not be destroyed, and closing the session destroys it.
	drop bool
}

// brokenSession reports errors after which a session must not be reused.
func brokenSession(err error) bool {
	return isCKR(err,
		pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_OPERATION_ACTIVE)
}

// do runs fn with a session from the pool.
func (r *rawToken) do(fn func(*rawSession) error) error {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return ErrClosed
	}
	p, err := r.start()
	if err != nil {
		return err
	}
	r.sem <- struct{}{}
	defer func() { <-r.sem }()
	rs := &rawSession{Ctx: p}
	select {
	case rs.s = <-r.idle:
	default:
		if rs.s, err = r.openSession(p); err != nil {
			return err
		}
	}
	err = fn(rs)
	if rs.drop || brokenSession(err) {
		_ = p.CloseSession(rs.s)
		return err
	}
	select {
	case r.idle <- rs.s:
	default: // cannot happen: sessions never outnumber sem tokens
		_ = p.CloseSession(rs.s)
	}
	return err
}

// close closes this rawToken's sessions and, only if it initialised the
// library itself, finalises it; see rawToken. It waits for operations in
// flight. Calling it again does nothing.
func (r *rawToken) close() error {
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.p == nil {
		return nil
	}
	var errs []error
	for done := false; !done; {
		select {
		case s := <-r.idle:
			if err := r.p.CloseSession(s); err != nil {
				errs = append(errs, fmt.Errorf("hsm: close session: %w", err))
			}
		default:
			done = true
		}
	}
	if r.owner {
		if err := r.p.Finalize(); err != nil {
			errs = append(errs, fmt.Errorf("hsm: finalise %s: %w", r.module, err))
		}
	}
	r.p.Destroy()
	r.p = nil
	return errors.Join(errs...)
}

// find returns the objects matching tmpl, at most max.
func (rs *rawSession) find(tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := rs.FindObjectsInit(rs.s, tmpl); err != nil {
		return nil, err
	}
	objs, _, err := rs.FindObjects(rs.s, max)
	if ferr := rs.FindObjectsFinal(rs.s); err == nil {
		err = ferr
	}
	return objs, err
}
