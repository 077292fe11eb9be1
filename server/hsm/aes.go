package hsm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// Errors of data keys.
var (
	// ErrUnwrap: a wrapped data key did not unwrap under the named KEK. The
	// blob was made under another KEK, was altered or truncated, or is not
	// a wrapped 16- or 32-byte key. The error never says which, so that it
	// is no oracle.
	ErrUnwrap = errors.New("hsm: unwrap failed: wrong KEK or damaged blob")
	// ErrClosed: the Token was closed.
	ErrClosed = errors.New("hsm: token closed")
)

// KEKSize is the length in bytes of a key-encryption key: AES-256, because
// escrowed data keys may have to stay confidential for the life of a device.
const KEKSize = 32

// Data key sizes NewDataKey accepts: AES-128 and AES-256.
const (
	DataKey128 = 16
	DataKey256 = 32
)

// wrappedLen is the length of a data key of size n wrapped with RFC 5649:
// the 8-byte integrity block plus the key padded to 8 bytes.
func wrappedLen(n int) int { return 8 + (n+7)/8*8 }

func checkDataKeySize(size int) error {
	if size != DataKey128 && size != DataKey256 {
		return fmt.Errorf("hsm: data key size %d: want %d or %d", size, DataKey128, DataKey256)
	}
	return nil
}

// checkWrappedLen refuses, before any key is touched, a blob that cannot be
// a wrapped 16- or 32-byte key.
func checkWrappedLen(wrapped []byte) error {
	if len(wrapped) != wrappedLen(DataKey128) && len(wrapped) != wrappedLen(DataKey256) {
		return fmt.Errorf("%w: %d bytes, want %d or %d", ErrUnwrap, len(wrapped), wrappedLen(DataKey128), wrappedLen(DataKey256))
	}
	return nil
}

func checkLabel(label string) error {
	if label == "" {
		return errors.New("hsm: empty key label")
	}
	return nil
}

// secretKeyURI is the RFC 7512 URI of a secret key such as a KEK.
func secretKeyURI(token, object string) string {
	return strings.TrimSuffix(KeyURI(token, object), ";type=private") + ";type=secret-key"
}

// rawSessions bounds the PKCS#11 sessions a Token opens for data keys, on
// top of crypto11's pool. Data keys are made and unwrapped once per device
// rotation or escrow recovery, far less often than signatures, and SoftHSM2
// serialises much of its work anyway; four sessions keep a few rotations in
// flight without eating into a hardware HSM's session limit.
const rawSessions = 4

// ckmAESKeyWrapKWP is CKM_AES_KEY_WRAP_KWP of PKCS#11 3.x, which
// miekg/pkcs11 does not define.
const ckmAESKeyWrapKWP = 0x0000210B

// wrapMechs are the RFC 5649 (AES Key Wrap with Padding) mechanisms, in
// order of preference.
//
// The names matter because PKCS#11 and SoftHSM2 disagree on them (SoftHSMv2
// issue #726). PKCS#11 3.x defines CKM_AES_KEY_WRAP_KWP (0x210B) as RFC
// 5649 and keeps CKM_AES_KEY_WRAP_PAD (0x210A), deprecated, for RFC 3394
// over PKCS#7-padded data. SoftHSM2 2.6 offers only 0x210A and implements
// it as RFC 5649 (OpenSSL's wrap_pad), so that is what fleetd uses on it. A
// token that offers 0x210B is taken to follow the standard, and KWP is
// preferred there, so that escrow blobs are RFC 5649 on every token.
// NewDataKey checks the blob length, which catches a token whose 0x210A is
// the PKCS#7 variant (its blobs are 8 bytes longer).
//
// SoftHSM2 2.6 also zero-pads a key to a multiple of 8 bytes before it
// wraps it, so for other key lengths its output is not RFC 5649's (the MLI
// counts the padding). Data keys are 16 or 32 bytes, where it is exact.
var wrapMechs = []uint{ckmAESKeyWrapKWP, pkcs11.CKM_AES_KEY_WRAP_PAD}

// wrapMech is the token's RFC 5649 mechanism with the default Alternative
// Initial Value (no mechanism parameter).
func (r *rawToken) wrapMech() []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(r.mech, nil)}
}

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

// kekTemplate selects AES token keys named label.
func kekTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// findKEK returns the handle of the one KEK named label.
func (t *Token) findKEK(rs *rawSession, label string) (pkcs11.ObjectHandle, error) {
	objs, err := rs.find(kekTemplate(label), 2)
	if err != nil {
		return 0, fmt.Errorf("hsm: find %s: %w", secretKeyURI(t.label, label), err)
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("%w: %s (%d matches)", ErrKeyNotFound, secretKeyURI(t.label, label), len(objs))
	}
	return objs[0], nil
}

// GenerateKEK creates the AES-256 key-encryption key named label inside the
// token, under which NewDataKey escrows data keys. The KEK is a token object
// that is sensitive and never extractable, and can only wrap and unwrap
// (not encrypt or decrypt, which would let anyone holding the PIN decrypt a
// wrapped blob with raw AES and bypass the key-wrap integrity check); it is
// not modifiable, so those attributes cannot be changed later. CKA_LABEL and
// CKA_ID are both label, as for GenerateP256.
//
// It fails with ErrKeyExists if a secret key already carries the label or
// ID: generating twice would make the escrow KEK ambiguous, and silently
// replacing it would orphan every blob made under the old one. The check
// and the generation are atomic within this process only.
func (t *Token) GenerateKEK(label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	uri := secretKeyURI(t.label, label)
	t.genMu.Lock()
	defer t.genMu.Unlock()
	return t.raw.do(func(rs *rawSession) error {
		for _, attr := range []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID} {
			objs, err := rs.find([]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(attr, label),
			}, 1)
			if err != nil {
				return fmt.Errorf("hsm: look up %s: %w", uri, err)
			}
			if len(objs) > 0 {
				return fmt.Errorf("%w: %s", ErrKeyExists, uri)
			}
		}
		_, err := rs.GenerateKey(rs.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, KEKSize),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		})
		if err != nil {
			return fmt.Errorf("hsm: generate %s: %w", uri, err)
		}
		return nil
	})
}

// HasKEK reports whether an AES key named label is in the token, so that
// fleetd init can create the escrow KEK once and later starts can check for
// it without treating ErrKeyExists as success.
func (t *Token) HasKEK(label string) (bool, error) {
	if err := checkLabel(label); err != nil {
		return false, err
	}
	var found bool
	err := t.raw.do(func(rs *rawSession) error {
		objs, err := rs.find(kekTemplate(label), 1)
		if err != nil {
			return fmt.Errorf("hsm: find %s: %w", secretKeyURI(t.label, label), err)
		}
		found = len(objs) > 0
		return nil
	})
	return found, err
}

// NewDataKey generates an AES data key of size bytes (16 or 32) inside the
// token and returns it twice: in plaintext, for the caller to seal to a
// device (HPKE), and wrapped under the KEK named kek, for escrow.
// UnwrapDataKey recovers the key from the wrapped form.
//
// The wrap is AES Key Wrap with Padding (RFC 5649): CKM_AES_KEY_WRAP_KWP
// where the token offers it, else CKM_AES_KEY_WRAP_PAD, which is what
// SoftHSM2 2.6 offers and implements as RFC 5649. The blob is size+8 bytes,
// byte for byte what WrapPad makes under the same KEK: the escrow format
// does not depend on the token.
//
// The key is generated by the token's RNG as a session object that is
// neither sensitive nor a token object, and is destroyed before NewDataKey
// returns. Letting its value out is the point: the plaintext has to reach
// the HPKE sealing in fleetd's memory, and the object never persists in the
// token. (Should destroying it fail, the session is closed, which destroys
// it.) Each call counts as one HSM operation in Ops: the wrap under the KEK.
//
// The caller owns the returned key and should clear it once sealed.
func (t *Token) NewDataKey(kek string, size int) (key, wrapped []byte, err error) {
	if err := checkDataKeySize(size); err != nil {
		return nil, nil, err
	}
	if err := checkLabel(kek); err != nil {
		return nil, nil, err
	}
	err = t.raw.do(func(rs *rawSession) error {
		h, err := t.findKEK(rs, kek)
		if err != nil {
			return err
		}
		obj, err := rs.GenerateKey(rs.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, dataKeyTemplate(size))
		if err != nil {
			return fmt.Errorf("hsm: generate data key: %w", err)
		}
		defer rs.destroy(obj)
		t.ops.Add(1)
		w, err := rs.WrapKey(rs.s, t.raw.wrapMech(), h, obj)
		if err != nil {
			return fmt.Errorf("hsm: wrap data key under %s: %w", secretKeyURI(t.label, kek), err)
		}
		if len(w) != wrappedLen(size) {
			return fmt.Errorf("hsm: wrap data key under %s: %d-byte blob, want %d: the token's wrap mechanism is not RFC 5649", secretKeyURI(t.label, kek), len(w), wrappedLen(size))
		}
		k, err := rs.value(obj, size)
		if err != nil {
			return err
		}
		key, wrapped = k, w
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return key, wrapped, nil
}

// UnwrapDataKey recovers a data key that NewDataKey wrapped under the KEK
// named kek: it unwraps the blob inside the token (RFC 5649, as NewDataKey
// wraps) into a session object, reads its value and destroys it. A blob made under another KEK, altered or truncated fails with an
// error wrapping ErrUnwrap; an unknown kek with ErrKeyNotFound. Each call
// that reaches the KEK counts as one HSM operation in Ops.
func (t *Token) UnwrapDataKey(kek string, wrapped []byte) ([]byte, error) {
	if err := checkLabel(kek); err != nil {
		return nil, err
	}
	if err := checkWrappedLen(wrapped); err != nil {
		return nil, err
	}
	var key []byte
	err := t.raw.do(func(rs *rawSession) error {
		h, err := t.findKEK(rs, kek)
		if err != nil {
			return err
		}
		t.ops.Add(1)
		obj, err := rs.UnwrapKey(rs.s, t.raw.wrapMech(), h, wrapped, dataKeyTemplate(0))
		if err != nil {
			if isCKR(err, pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
				pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
				pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_GENERAL_ERROR) {
				// SoftHSM2 reports a failed integrity check as
				// CKR_GENERAL_ERROR (OpenSSL gives no reason).
				return fmt.Errorf("%w: under %s (%v)", ErrUnwrap, secretKeyURI(t.label, kek), err)
			}
			return fmt.Errorf("hsm: unwrap data key under %s: %w", secretKeyURI(t.label, kek), err)
		}
		defer rs.destroy(obj)
		k, err := rs.value(obj, 0)
		if err != nil {
			return err
		}
		if checkDataKeySize(len(k)) != nil {
			clear(k)
			return fmt.Errorf("%w: under %s: not a 16- or 32-byte key", ErrUnwrap, secretKeyURI(t.label, kek))
		}
		key = k
		return nil
	})
	if err != nil {
		return nil, err
	}
	return key, nil
}

// dataKeyTemplate is a transient AES key whose value may be read: a session
// object (CKA_TOKEN false, gone when the session closes at the latest),
// extractable so it can be wrapped, not sensitive so its value can be read,
// and usable for nothing else. size 0 leaves CKA_VALUE_LEN out, for unwrap,
// where the blob gives the length.
func dataKeyTemplate(size int) []*pkcs11.Attribute {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	if size > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size))
	}
	return tmpl
}

// value reads CKA_VALUE of a transient key; size 0 accepts any length.
func (rs *rawSession) value(obj pkcs11.ObjectHandle, size int) ([]byte, error) {
	attrs, err := rs.GetAttributeValue(rs.s, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, fmt.Errorf("hsm: read data key: %w", err)
	}
	if len(attrs) != 1 || (size > 0 && len(attrs[0].Value) != size) {
		return nil, errors.New("hsm: read data key: unexpected value length")
	}
	return attrs[0].Value, nil
}

// destroy destroys a session object, or has the session closed (which
// destroys it) if that fails.
func (rs *rawSession) destroy(obj pkcs11.ObjectHandle) {
	if err := rs.DestroyObject(rs.s, obj); err != nil {
		rs.drop = true
	}
}

// kekPath is where SoftKeys keeps the KEK named label.
func (s *SoftKeys) kekPath(label string) string { return filepath.Join(s.dir, label+".kek") }

// checkSoftLabel also keeps a label from naming a file outside the directory.
func checkSoftLabel(label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	if filepath.Base(label) != label || label == "." || label == ".." {
		return fmt.Errorf("hsm: soft key label %q is not a plain file name", label)
	}
	return nil
}

// GenerateKEK writes a random 32-byte KEK to a file (0600) in the key
// directory; it refuses to overwrite one (ErrKeyExists), since that would
// orphan every blob wrapped under it. Anyone who can read the file can
// unwrap every escrowed data key: this is the insecure mode.
func (s *SoftKeys) GenerateKEK(label string) error {
	if err := checkSoftLabel(label); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kek := make([]byte, KEKSize)
	defer clear(kek)
	if _, err := rand.Read(kek); err != nil {
		return fmt.Errorf("hsm: soft generate KEK %s: %w", label, err)
	}
	path := s.kekPath(label)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: file://%s", ErrKeyExists, path)
	} else if err != nil {
		return fmt.Errorf("hsm: soft generate KEK %s: %w", label, err)
	}
	_, err = f.Write(kek)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path) // a short KEK file would fail every later use
		return fmt.Errorf("hsm: soft write KEK %s: %w", label, err)
	}
	return nil
}

// HasKEK reports whether the KEK file named label exists.
func (s *SoftKeys) HasKEK(label string) (bool, error) {
	if err := checkSoftLabel(label); err != nil {
		return false, err
	}
	_, err := os.Stat(s.kekPath(label))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("hsm: soft KEK %s: %w", label, err)
	}
	return true, nil
}

// readKEK loads the KEK named label; the caller clears it.
func (s *SoftKeys) readKEK(label string) ([]byte, error) {
	if err := checkSoftLabel(label); err != nil {
		return nil, err
	}
	path := s.kekPath(label)
	kek, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: file://%s", ErrKeyNotFound, path)
	} else if err != nil {
		return nil, fmt.Errorf("hsm: soft read KEK %s: %w", label, err)
	}
	if len(kek) != KEKSize {
		clear(kek)
		return nil, fmt.Errorf("hsm: soft read KEK %s: %d bytes, want %d", label, len(kek), KEKSize)
	}
	return kek, nil
}

// NewDataKey makes a random data key of size bytes (16 or 32) and wraps it
// under the KEK file named kek with WrapPad, the software twin of
// Token.NewDataKey: the blobs are the same format, so escrow moved from a
// soft KEK to a token KEK of the same value would still unwrap. Each call
// counts one operation in Ops.
func (s *SoftKeys) NewDataKey(kek string, size int) (key, wrapped []byte, err error) {
	if err := checkDataKeySize(size); err != nil {
		return nil, nil, err
	}
	k, err := s.readKEK(kek)
	if err != nil {
		return nil, nil, err
	}
	defer clear(k)
	key = make([]byte, size)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, fmt.Errorf("hsm: soft data key: %w", err)
	}
	s.ops.Add(1)
	wrapped, err = WrapPad(k, key)
	if err != nil {
		clear(key)
		return nil, nil, err
	}
	return key, wrapped, nil
}

// UnwrapDataKey reverses NewDataKey with UnwrapPad. Errors are those of
// Token.UnwrapDataKey: ErrUnwrap for a wrong KEK or a damaged blob,
// ErrKeyNotFound for an unknown kek.
func (s *SoftKeys) UnwrapDataKey(kek string, wrapped []byte) ([]byte, error) {
	if err := checkWrappedLen(wrapped); err != nil {
		return nil, err
	}
	k, err := s.readKEK(kek)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	s.ops.Add(1)
	key, err := UnwrapPad(k, wrapped)
	if err != nil {
		return nil, err
	}
	if checkDataKeySize(len(key)) != nil {
		clear(key)
		return nil, fmt.Errorf("%w: not a 16- or 32-byte key", ErrUnwrap)
	}
	return key, nil
}
