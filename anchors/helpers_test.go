package anchors

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/keyfleet/keyfleet/protocol"
)

// Shared fixtures of the anchors tests.

// testNow is the issue time of every test set.
var testNow = time.Unix(1_700_000_000, 0)

// fixedKey derives a P-256 key from a label, for fixtures that should not
// change from run to run (the fuzz seeds).
func fixedKey(tb testing.TB, label string) *ecdsa.PrivateKey {
	tb.Helper()
	d := sha256.Sum256([]byte("keyfleet anchors test key: " + label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatalf("fixed key %q: %v", label, err)
	}
	return k
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate key: %v", err)
	}
	return k
}

func kidOf(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	tb.Helper()
	kid, err := protocol.KeyID(&k.PublicKey)
	if err != nil {
		tb.Fatalf("KeyID: %v", err)
	}
	return kid
}

func spki(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatalf("marshal key: %v", err)
	}
	return der
}

// selfSigned makes a root like certs.NewRoot does: short CN, CA, no path
// below the issuing CA.
func selfSigned(tb testing.TB, key *ecdsa.PrivateKey, name string, isCA bool) []byte {
	tb.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		MaxPathLen:            0,
		MaxPathLenZero:        isCA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("create root %q: %v", name, err)
	}
	return der
}

// era is the key material of one set: what the server holds in its HSM.
type era struct {
	root, update, firmware *ecdsa.PrivateKey
	rootCert               []byte
}

func newEra(tb testing.TB, name string) era {
	tb.Helper()
	e := era{root: newKey(tb), update: newKey(tb), firmware: newKey(tb)}
	e.rootCert = selfSigned(tb, e.root, name, true)
	return e
}

// fixedEra is newEra with keys derived from name.
func fixedEra(tb testing.TB, name string) era {
	tb.Helper()
	e := era{root: fixedKey(tb, name+"/root"), update: fixedKey(tb, name+"/update"), firmware: fixedKey(tb, name+"/firmware")}
	e.rootCert = selfSigned(tb, e.root, name, true)
	return e
}

// withUpdate returns e with a fresh update key: the usual rotation, root
// and firmware keys unchanged.
func (e era) withUpdate(tb testing.TB) era {
	e.update = newKey(tb)
	return e
}

// set returns an unsigned set naming e's keys; Version and Prev are left
// to Genesis and Next.
func (e era) set(tb testing.TB, revoked ...[]byte) *Set {
	tb.Helper()
	return &Set{
		Root:        e.rootCert,
		UpdateKey:   spki(tb, &e.update.PublicKey),
		FirmwareKey: spki(tb, &e.firmware.PublicKey),
		Revoked:     revoked,
		IssuedAt:    uint64(testNow.Unix()),
	}
}

func (e era) signers() []crypto.Signer { return []crypto.Signer{e.root, e.update} }

// history is a genuine anchor history built the way the server builds it:
// Genesis, then Next. eras[i], raw[i] and signed[i] belong to v(i+1).
type history struct {
	eras   []era
	raw    [][]byte
	signed []*Signed
}

func newHistory(tb testing.TB, first era) *history {
	tb.Helper()
	b, err := Genesis(first.set(tb), first.signers()...)
	if err != nil {
		tb.Fatalf("Genesis: %v", err)
	}
	s, err := TrustOnInstall(b)
	if err != nil {
		tb.Fatalf("TrustOnInstall: %v", err)
	}
	return &history{eras: []era{first}, raw: [][]byte{b}, signed: []*Signed{s}}
}

// extend appends the next set, naming e's keys and signed by the newest
// era's keys.
func (h *history) extend(tb testing.TB, e era, revoked ...[]byte) *history {
	tb.Helper()
	last := len(h.eras) - 1
	b, err := Next(h.signed[last], e.set(tb, revoked...), h.eras[last].signers()...)
	if err != nil {
		tb.Fatalf("Next after v%d: %v", last+1, err)
	}
	s, err := Parse(b)
	if err != nil {
		tb.Fatalf("Parse v%d: %v", last+2, err)
	}
	h.eras, h.raw, h.signed = append(h.eras, e), append(h.raw, b), append(h.signed, s)
	return h
}

// v returns the signed set of version n.
func (h *history) v(n int) *Signed { return h.signed[n-1] }

// chain returns the encoded sets of versions from..to.
func (h *history) chain(from, to int) [][]byte { return slices.Clone(h.raw[from-1 : to]) }

// fourSets is a history of four sets: v2 rotates the update key, v3 the
// root as well, v4 the update key again.
func fourSets(tb testing.TB) *history {
	tb.Helper()
	e1 := newEra(tb, "keyfleet root 1")
	e2 := e1.withUpdate(tb)
	e3 := newEra(tb, "keyfleet root 2")
	e4 := e3.withUpdate(tb)
	return newHistory(tb, e1).extend(tb, e2).extend(tb, e3).extend(tb, e4)
}

// signRaw signs a set without the checks of Sign, Genesis and Next: the
// tool of an attacker or a buggy server.
func signRaw(tb testing.TB, s *Set, signers ...crypto.Signer) []byte {
	tb.Helper()
	payload, err := protocol.MarshalCanonical(s)
	if err != nil {
		tb.Fatalf("encode set: %v", err)
	}
	return signBytes(tb, payload, signers...)
}

func signBytes(tb testing.TB, payload []byte, signers ...crypto.Signer) []byte {
	tb.Helper()
	b, err := signPayload(payload, signers)
	if err != nil {
		tb.Fatalf("sign payload: %v", err)
	}
	return b
}

// after returns a copy of e's set as the successor of prev, which Next
// would produce; callers then break it.
func after(tb testing.TB, prev *Signed, e era) *Set {
	tb.Helper()
	s := e.set(tb, prev.Revoked...)
	s.Version = prev.Version + 1
	h := prev.Hash()
	s.Prev = h[:]
	return s
}

// mutateEnvelope decodes a signed set's COSE_Sign, lets f change it and
// encodes it again, for envelope-level hostile cases.
func mutateEnvelope(tb testing.TB, b []byte, f func(*rawSign)) []byte {
	tb.Helper()
	var env rawSign
	if err := protocol.UnmarshalStrict(b[len(coseSignPrefix):], &env); err != nil {
		tb.Fatalf("decode envelope: %v", err)
	}
	f(&env)
	// Core deterministic, but nil is null: an attacker's encoder writes
	// what ours (nil as empty) never does, such as a detached payload.
	enc, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := enc.Marshal(env)
	if err != nil {
		tb.Fatalf("encode envelope: %v", err)
	}
	return append(slices.Clone(coseSignPrefix), out...)
}

// sigHeader is the protected header of a signature by kid.
func sigHeader(kid []byte) []byte { return append(slices.Clone(sigHeaderPrefix), kid...) }

// errSentinels lists the package's errors: every refusal wraps one.
var errSentinels = []error{
	ErrTooLarge, ErrMalformed, ErrNoCurrent, ErrRollback, ErrFork, ErrSkip, ErrTooLong,
	ErrRevokedKey, ErrUnknownKey, ErrBadSignature, ErrMissingSignature, ErrRevocationDropped,
}

func isSentinel(err error) bool {
	return slices.ContainsFunc(errSentinels, func(e error) bool { return errors.Is(err, e) })
}

// snapshot records a Signed so a test can check it was left alone.
type snapshot struct {
	raw []byte
	set Set
}

func snap(s *Signed) snapshot {
	c := *s.Set
	c.Root, c.UpdateKey, c.FirmwareKey, c.Prev = bytes.Clone(c.Root), bytes.Clone(c.UpdateKey), bytes.Clone(c.FirmwareKey), bytes.Clone(c.Prev)
	c.Revoked = slices.Clone(c.Revoked)
	for i := range c.Revoked {
		c.Revoked[i] = bytes.Clone(c.Revoked[i])
	}
	return snapshot{raw: bytes.Clone(s.Raw), set: c}
}

func (sn snapshot) check(tb testing.TB, s *Signed) {
	tb.Helper()
	if !bytes.Equal(s.Raw, sn.raw) || !reflect.DeepEqual(*s.Set, sn.set) {
		tb.Errorf("current set changed: got v%d %x, want v%d %x", s.Version, s.Raw, sn.set.Version, sn.raw)
	}
}
