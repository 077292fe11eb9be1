//go:build cgo

package hwkeys

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"strings"
	"sync"

	"github.com/keyfleet/keyfleet/internal/p11uri"
	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Config is a parsed --key-store URI.
type Config struct {
	// Module is the PKCS#11 library (module-path), e.g.
	// /usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1.
	Module string
	// Token is the token's label (token=).
	Token string
	// Object prefixes the labels of this agent's keys (object=): a key is
	// labelled "OBJECT/identity/v3". Keys under other labels are never
	// touched, so one token can serve other users too.
	Object string
	// PIN is the user PIN, from pin-source=file:PATH or pin-value=.
	PIN string
}

// Attributes a --key-store URI may carry; others are refused rather than
// ignored, so that a typo does not silently select another token.
var (
	pathAttrs  = []string{"token", "object"}
	queryAttrs = []string{"module-path", "pin-source", "pin-value"}
)

// ParseURI reads a --key-store URI such as
//
//	pkcs11:token=agent;object=fleet-agent?module-path=/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1&pin-source=file:/run/credentials/fleet-agent/pin
//
// with go.step.sm/crypto/kms/uri, the parser fleetd's --key-uri uses. It
// reads the PIN source and checks that the module exists, so a bad URI is
// refused before anything starts. Errors never carry the URI, which may
// hold a pin-value.
func ParseURI(raw string) (Config, error) {
	fail := func(format string, a ...any) (Config, error) {
		return Config{}, fmt.Errorf("hwkeys: --key-store: "+format, a...)
	}
	if !strings.HasPrefix(raw, Scheme) {
		return fail("want a pkcs11: URI (RFC 7512)")
	}
	u, err := p11uri.Parse(raw, pathAttrs, queryAttrs)
	if err != nil {
		return fail("%v", err)
	}
	c := Config{Token: u.Path.Get("token"), Object: u.Path.Get("object"), Module: u.Query.Get("module-path")}
	switch {
	case c.Token == "":
		return fail("missing token= (the token's label)")
	case c.Object == "":
		return fail("missing object= (the label prefix of the agent's keys)")
	case c.Module == "":
		return fail("missing module-path= (the PKCS#11 library)")
	}
	if err := p11uri.CheckModule(c.Module); err != nil {
		return fail("%v", err)
	}
	if c.PIN, err = u.PIN(); err != nil {
		return fail("%v", err)
	}
	if c.PIN == "" {
		return fail("no PIN: add pin-source=file:PATH")
	}
	return c, nil
}

// Store is an open token holding one agent's keys. It implements
// device.HardwareKeys and is safe for concurrent use.
//
// It keeps one session and logs in only for the length of each operation:
// tpm2-pkcs11 keeps every key it has used loaded in the TPM until logout,
// and a TPM reached without a resource manager (/dev/tpm0 rather than
// /dev/tpmrm0, or swtpm) holds only three objects, fewer than an agent's
// active, pending, previous and birth keys. A login costs a few
// milliseconds, and an agent signs a few times per connection.
type Store struct {
	mu     sync.Mutex
	p      *pkcs11.Ctx
	sess   pkcs11.SessionHandle
	pin    string
	object string
	token  string
	mine   bool // this Store initialised the module and finalises it
}

// Open parses raw (ParseURI), opens a session on its token and checks the
// PIN.
func Open(raw string) (*Store, error) {
	c, err := ParseURI(raw)
	if err != nil {
		return nil, err
	}
	p := pkcs11.New(c.Module)
	if p == nil {
		return nil, fmt.Errorf("hwkeys: cannot load PKCS#11 module %s", c.Module)
	}
	s := &Store{p: p, pin: c.PIN, object: c.Object, token: c.Token, mine: true}
	if err := p.Initialize(); err != nil {
		var pe pkcs11.Error
		if !errors.As(err, &pe) || pe != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			p.Destroy()
			return nil, fmt.Errorf("hwkeys: initialise %s: %w", c.Module, err)
		}
		s.mine = false
	}
	fail := func(err error) (*Store, error) {
		if s.mine {
			_ = p.Finalize()
		}
		p.Destroy()
		return nil, err
	}
	if err := s.openSession(); err != nil {
		return fail(err)
	}
	if err := s.do(func() error { return nil }); err != nil {
		_ = p.CloseSession(s.sess)
		return fail(fmt.Errorf("hwkeys: token %q: %w", c.Token, err))
	}
	return s, nil
}

// openSession opens the session on the token labelled s.token.
func (s *Store) openSession() error {
	slots, err := s.p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hwkeys: list slots: %w", err)
	}
	for _, sl := range slots {
		if ti, err := s.p.GetTokenInfo(sl); err == nil && ti.Label == s.token {
			if s.sess, err = s.p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
				return fmt.Errorf("hwkeys: open a session on token %q: %w", s.token, err)
			}
			return nil
		}
	}
	return fmt.Errorf("hwkeys: no token labelled %q", s.token)
}

// reload makes the module read the token's objects afresh, after a
// destroy. tpm2-pkcs11 1.9 numbers a new object after the last one in its
// list, so once an object before the last is destroyed a new key can get
// the handle of an existing one, and a search then returns the wrong
// object; a reloaded list has no holes. Only a Store that initialised the
// module can; the caller holds s.mu.
func (s *Store) reload() error {
	if !s.mine {
		return nil
	}
	_ = s.p.CloseSession(s.sess)
	if err := s.p.Finalize(); err != nil {
		return fmt.Errorf("hwkeys: reload the token: %w", err)
	}
	if err := s.p.Initialize(); err != nil {
		return fmt.Errorf("hwkeys: reload the token: %w", err)
	}
	return s.openSession()
}

// Close ends the session and releases the module.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.p.CloseSession(s.sess)
	if s.mine {
		err = errors.Join(err, s.p.Finalize())
	}
	s.p.Destroy()
	return err
}

// do runs fn logged in, and logs out after it, which unloads the keys
// fn used from the TPM.
func (s *Store) do(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.p.Login(s.sess, pkcs11.CKU_USER, s.pin); err != nil {
		var pe pkcs11.Error
		if !errors.As(err, &pe) || pe != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			return fmt.Errorf("log in: %w", err)
		}
	}
	err := fn()
	if lerr := s.p.Logout(s.sess); lerr != nil && err == nil {
		err = fmt.Errorf("log out: %w", lerr)
	}
	return err
}

// p256 is the DER OID of the P-256 curve, the CKA_EC_PARAMS of its keys.
var p256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// keyTemplates are the attributes of a device key pair: the private half
// stays in the token (CKA_TOKEN), cannot be read (CKA_SENSITIVE) or
// wrapped out (not CKA_EXTRACTABLE), and signs; the public half verifies.
// CKA_ID, random, is the key's reference; CKA_LABEL names it for people.
func keyTemplates(id []byte, label string) (public, private []*pkcs11.Attribute) {
	public = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	private = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	return public, private
}

// Label returns the CKA_LABEL of the key named name ("identity/v3").
func (s *Store) Label(name string) string { return s.object + "/" + name }

// Generate implements device.HardwareKeys: a P-256 key pair, the only key
// type keyfleet identities use (and one a TPM makes in milliseconds, where
// RSA takes seconds), with a random CKA_ID as its reference.
func (s *Store) Generate(name string) (string, crypto.Signer, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", nil, fmt.Errorf("hwkeys: key id: %w", err)
	}
	pubT, privT := keyTemplates(id, s.Label(name))
	var pub *ecdsa.PublicKey
	err := s.do(func() error {
		ph, _, err := s.p.GenerateKeyPair(s.sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
		if err != nil {
			return err
		}
		pub, err = s.publicKey(ph)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("hwkeys: generate %s: %w", s.Label(name), err)
	}
	return hex.EncodeToString(id), &signer{s: s, id: id, pub: pub}, nil
}

// publicKey reads the EC public key of object h. The caller is logged in.
func (s *Store) publicKey(h pkcs11.ObjectHandle) (*ecdsa.PublicKey, error) {
	attrs, err := s.p.GetAttributeValue(s.sess, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	var point []byte
	if _, err := asn1.Unmarshal(attrs[0].Value, &point); err != nil {
		point = attrs[0].Value // some modules give the raw point
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return pub, nil
}

// find returns the objects of class (-1: any) whose CKA_ID is id. The
// caller is logged in.
func (s *Store) find(id []byte, class int) ([]pkcs11.ObjectHandle, error) {
	var tmpl []*pkcs11.Attribute
	if id != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	if class >= 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, uint(class)))
	}
	if err := s.p.FindObjectsInit(s.sess, tmpl); err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := s.p.FindObjects(s.sess, 64)
		if err != nil {
			_ = s.p.FindObjectsFinal(s.sess)
			return nil, fmt.Errorf("find objects: %w", err)
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	if err := s.p.FindObjectsFinal(s.sess); err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	// Check what each handle is: a module that mixes up handles (see
	// reload) must not make the agent sign with, or destroy, another key.
	kept := out[:0]
	for _, h := range out {
		a, err := s.p.GetAttributeValue(s.sess, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return nil, fmt.Errorf("read object %d: %w", h, err)
		}
		if (class < 0 || bytesToUint(a[0].Value) == uint(class)) && (id == nil || bytes.Equal(a[1].Value, id)) {
			kept = append(kept, h)
		}
	}
	return kept, nil
}

// bytesToUint reads a CK_ULONG attribute value (native byte order, as
// miekg/pkcs11 returns it).
func bytesToUint(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0) // no CK_ULONG: matches no class
}

func parseRef(ref string) ([]byte, error) {
	id, err := hex.DecodeString(ref)
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("hwkeys: malformed key reference %q", ref)
	}
	return id, nil
}

// Signer implements device.HardwareKeys.
func (s *Store) Signer(ref string) (crypto.Signer, error) {
	id, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	var pub *ecdsa.PublicKey
	err = s.do(func() error {
		privs, err := s.find(id, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		pubs, err := s.find(id, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		if len(privs) != 1 || len(pubs) != 1 {
			return fmt.Errorf("%d private and %d public objects: %w", len(privs), len(pubs), fs.ErrNotExist)
		}
		pub, err = s.publicKey(pubs[0])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hwkeys: key %s: %w", ref, err)
	}
	return &signer{s: s, id: id, pub: pub}, nil
}

// signer is a key pair in the token.
type signer struct {
	s   *Store
	id  []byte
	pub *ecdsa.PublicKey
}

// Public implements crypto.Signer.
func (k *signer) Public() crypto.PublicKey { return k.pub }

// Sign implements crypto.Signer: an ECDSA signature over digest made in
// the token, in the ASN.1 form crypto.Signer promises.
func (k *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("hwkeys: sign: digest of %d bytes for %v", len(digest), opts.HashFunc())
	}
	var rs []byte
	err := k.s.do(func() error {
		privs, err := k.s.find(k.id, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		if len(privs) != 1 {
			return fmt.Errorf("%d private objects: %w", len(privs), fs.ErrNotExist)
		}
		if err := k.s.p.SignInit(k.s.sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, privs[0]); err != nil {
			return err
		}
		rs, err = k.s.p.Sign(k.s.sess, digest)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hwkeys: sign with key %x: %w", k.id, err)
	}
	if len(rs) != 64 {
		return nil, fmt.Errorf("hwkeys: sign with key %x: %d-byte signature, want 64", k.id, len(rs))
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(new(big.Int).SetBytes(rs[:32]))
		b.AddASN1BigInt(new(big.Int).SetBytes(rs[32:]))
	})
	return b.Bytes()
}

// Destroy implements device.HardwareKeys: both halves go. A key already
// gone is not an error: destroying is what a retry after a crash repeats.
func (s *Store) Destroy(ref string) error {
	id, err := parseRef(ref)
	if err != nil {
		return err
	}
	destroyed := false
	err = s.do(func() error {
		hs, err := s.find(id, -1)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := s.p.DestroyObject(s.sess, h); err != nil {
				return err
			}
			destroyed = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hwkeys: destroy key %s: %w", ref, err)
	}
	if destroyed {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.reload()
	}
	return nil
}

// KeyInfo is what a token says of one of the agent's private keys.
type KeyInfo struct {
	Ref, Label             string
	Sensitive, Extractable bool
	// Local: the token generated the key itself (CKA_LOCAL), rather than
	// having it imported.
	Local bool
}

// Keys reads back every private key labelled under this store's prefix
// with the attributes that show it cannot leave the token, for tests and
// for an operator auditing a device.
func (s *Store) Keys() ([]KeyInfo, error) {
	var out []KeyInfo
	err := s.do(func() error {
		hs, err := s.find(nil, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		for _, h := range hs {
			a, err := s.p.GetAttributeValue(s.sess, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LOCAL, nil)})
			if err != nil {
				return fmt.Errorf("read attributes: %w", err)
			}
			if !strings.HasPrefix(string(a[0].Value), s.object+"/") {
				continue
			}
			flag := func(v []byte) bool { return len(v) == 1 && v[0] == 1 }
			out = append(out, KeyInfo{Label: string(a[0].Value), Ref: hex.EncodeToString(a[1].Value),
				Sensitive: flag(a[2].Value), Extractable: flag(a[3].Value), Local: flag(a[4].Value)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hwkeys: list keys: %w", err)
	}
	return out, nil
}

// Refs implements device.HardwareKeys: the private keys labelled under
// this store's prefix.
func (s *Store) Refs() ([]string, error) {
	keys, err := s.Keys()
	if err != nil {
		return nil, err
	}
	refs := make([]string, len(keys))
	for i, k := range keys {
		refs[i] = k.Ref
	}
	return refs, nil
}
