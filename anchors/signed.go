package anchors

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math"
	"math/big"
	"slices"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/keyfleet/keyfleet/protocol"
)

// Signed is a parsed signed set: the Set and the exact bytes it came in.
// The bytes matter because the next set's Prev is their hash and a device
// stores them as they are. Build one with Parse, TrustOnInstall or Walk;
// treat it as immutable. The Set's methods (RootCert, SigningKeys,
// IsRevoked, ...) are promoted.
type Signed struct {
	// Set is the decoded set, embedded so that s.Version, s.RootCert()
	// and the like read naturally.
	*Set
	// Raw is the tagged COSE_Sign the Set was parsed from.
	Raw []byte

	sigs []signature // parsed by Parse; nil in a hand-built Signed
}

// Hash is the SHA-256 of Raw: the value the next set carries as Prev.
func (s *Signed) Hash() [sha256.Size]byte { return sha256.Sum256(s.Raw) }

// signature is one COSE_Signature of a parsed set, checked for shape.
type signature struct {
	kid           []byte
	sig           *cose.Signature
	bodyProtected cbor.RawMessage
	payload       []byte
}

// externalAAD separates anchor-set signatures from every other use of the
// same keys: the update key also signs delegations, in COSE_Sign1.
var externalAAD = []byte("keyfleet/anchors/v1")

// Fixed parts of the envelope. Everything that varies lives in the
// payload; the headers have exactly one accepted encoding each:
//
//	COSE_Sign_Tagged = #6.98([h'', {}, payload, [+ [h'{1: -7, 4: kid}', {}, sig .size 64]]])
//
// Signatures are sorted by kid and ECDSA signatures are in low-S form
// (s <= n/2). Both choices remove the ways a third party could re-encode a
// genuine set without its keys (reordering signatures, negating s): a
// re-encoded set would have another Hash, and a device that walked it would
// then refuse the genuine successor as a fork.
var (
	coseSignPrefix  = []byte{0xd8, 0x62} // tag 98
	emptyProtected  = []byte{0x40}       // h''
	emptyHeaderMap  = []byte{0xa0}       // {}
	sigHeaderPrefix = []byte{0x4d, 0xa2, 0x01, 0x26, 0x04, 0x48}
)

const es256Size = 64

// halfOrder is n/2 for P-256: the largest s of a low-S signature.
var halfOrder = new(big.Int).Rsh(elliptic.P256().Params().N, 1)

// lowS rewrites an ES256 signature r||s with s > n/2 as r||(n-s), which
// verifies the same.
func lowS(sig []byte) {
	s := new(big.Int).SetBytes(sig[es256Size/2:])
	if s.Cmp(halfOrder) > 0 {
		s.Sub(elliptic.P256().Params().N, s)
		s.FillBytes(sig[es256Size/2:])
	}
}

// rawSign and rawSignature mirror COSE_Sign (RFC 9052 §4.1) for a strict
// decode before go-cose sees the signatures.
type rawSign struct {
	_           struct{} `cbor:",toarray"`
	Protected   cbor.RawMessage
	Unprotected cbor.RawMessage
	Payload     []byte
	Signatures  []rawSignature
}

type rawSignature struct {
	_           struct{} `cbor:",toarray"`
	Protected   cbor.RawMessage
	Unprotected cbor.RawMessage
	Signature   []byte
}

// Parse decodes a signed set strictly: size cap first, then the COSE_Sign
// envelope with one exact header layout, then the Set (canonical CBOR,
// no unknown fields) and its rules (P-256 keys, a CA root, distinct keys,
// Prev present exactly when Version > 1, sorted revocations). It verifies
// no signature: whose signatures count depends on the predecessor, which
// only Walk knows. Every error wraps ErrTooLarge or ErrMalformed.
func Parse(b []byte) (*Signed, error) {
	s, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("anchors: parse: %w", err)
	}
	return s, nil
}

func parse(b []byte) (*Signed, error) {
	if len(b) > MaxSetSize {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(b), MaxSetSize)
	}
	if !bytes.HasPrefix(b, coseSignPrefix) {
		return nil, fmt.Errorf("%w: not a tagged COSE_Sign", ErrMalformed)
	}
	var env rawSign
	if err := protocol.UnmarshalStrict(b[len(coseSignPrefix):], &env); err != nil {
		return nil, fmt.Errorf("%w: cose: %v", ErrMalformed, err)
	}
	sigs, err := checkEnvelope(&env)
	if err != nil {
		return nil, err
	}
	if err := protocol.RequireCanonical(b[len(coseSignPrefix):], &env); err != nil {
		return nil, fmt.Errorf("%w: cose: %v", ErrMalformed, err)
	}
	var s Set
	if err := protocol.UnmarshalCanonical(env.Payload, &s); err != nil {
		return nil, fmt.Errorf("%w: set: %v", ErrMalformed, err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("v%d: %w", s.Version, err)
	}
	return &Signed{Set: &s, Raw: bytes.Clone(b), sigs: sigs}, nil
}

func checkEnvelope(env *rawSign) ([]signature, error) {
	if !bytes.Equal(env.Protected, emptyProtected) || !bytes.Equal(env.Unprotected, emptyHeaderMap) {
		return nil, fmt.Errorf("%w: cose: body headers must be empty", ErrMalformed)
	}
	if env.Payload == nil {
		return nil, fmt.Errorf("%w: cose: detached payload", ErrMalformed)
	}
	if n := len(env.Signatures); n == 0 || n > MaxSignatures {
		return nil, fmt.Errorf("%w: cose: %d signatures, want 1 to %d", ErrMalformed, n, MaxSignatures)
	}
	sigs := make([]signature, 0, len(env.Signatures))
	for i, rs := range env.Signatures {
		p := rs.Protected
		if len(p) != len(sigHeaderPrefix)+KeyIDSize || !bytes.HasPrefix(p, sigHeaderPrefix) {
			return nil, fmt.Errorf("%w: cose: signature %d: protected header must be exactly {alg: ES256, kid: 8 bytes}", ErrMalformed, i)
		}
		if !bytes.Equal(rs.Unprotected, emptyHeaderMap) {
			return nil, fmt.Errorf("%w: cose: signature %d: unprotected header must be empty", ErrMalformed, i)
		}
		if len(rs.Signature) != es256Size {
			return nil, fmt.Errorf("%w: cose: signature %d is %d bytes, want %d", ErrMalformed, i, len(rs.Signature), es256Size)
		}
		if new(big.Int).SetBytes(rs.Signature[es256Size/2:]).Cmp(halfOrder) > 0 {
			return nil, fmt.Errorf("%w: cose: signature %d is not in low-S form", ErrMalformed, i)
		}
		kid := bytes.Clone(p[len(sigHeaderPrefix):])
		if i > 0 && bytes.Compare(sigs[i-1].kid, kid) >= 0 {
			return nil, fmt.Errorf("%w: cose: signatures not in strictly ascending kid order at %x", ErrMalformed, kid)
		}
		sigs = append(sigs, signature{
			kid: kid,
			sig: &cose.Signature{
				Headers: cose.Headers{
					RawProtected:   bytes.Clone(p),
					Protected:      cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: kid},
					RawUnprotected: bytes.Clone(emptyHeaderMap),
					Unprotected:    cose.UnprotectedHeader{},
				},
				Signature: rs.Signature,
			},
			bodyProtected: env.Protected,
			payload:       env.Payload,
		})
	}
	return sigs, nil
}

// verifyBy checks that s carries valid signatures by exactly the two
// signing keys of by (its predecessor, or s itself for version 1). A
// signature by a key that revoked reports is refused first, before
// anything else about it is looked at.
func verifyBy(by *Set, s *Signed, revoked func(kid []byte) bool) error {
	keys, err := by.SigningKeys()
	if err != nil {
		return err
	}
	names := [2]string{"root", "update"}
	var kids [2][]byte
	for i, k := range keys {
		if kids[i], err = protocol.KeyID(k); err != nil {
			return err
		}
	}
	var seen [2]bool
	for _, sig := range s.sigs {
		if revoked(sig.kid) {
			return fmt.Errorf("%w: kid %x", ErrRevokedKey, sig.kid)
		}
		i := slices.IndexFunc(kids[:], func(k []byte) bool { return bytes.Equal(k, sig.kid) })
		if i < 0 {
			return fmt.Errorf("%w: kid %x is neither the root key %x nor the update key %x of v%d", ErrUnknownKey, sig.kid, kids[0], kids[1], by.Version)
		}
		v, err := cose.NewVerifier(cose.AlgorithmES256, keys[i])
		if err != nil {
			return fmt.Errorf("%w: %s key: %v", ErrBadSignature, names[i], err)
		}
		if err := sig.sig.Verify(v, sig.bodyProtected, sig.payload, externalAAD); err != nil {
			return fmt.Errorf("%w: %s key %x: %v", ErrBadSignature, names[i], sig.kid, err)
		}
		seen[i] = true
	}
	for i := range seen {
		if !seen[i] {
			return fmt.Errorf("%w: %s key %x of v%d", ErrMissingSignature, names[i], kids[i], by.Version)
		}
	}
	return nil
}

// Sign encodes s and signs it with every signer (ES256, P-256 keys; a
// crypto11 HSM key works), returning a tagged COSE_Sign. It refuses a set
// or signature layout that Parse would refuse, but does not know whose
// signatures a device will demand: use Genesis for version 1 and Next
// after that, which check the signers. Sign is the low-level step they
// share.
func Sign(s *Set, signers ...crypto.Signer) ([]byte, error) {
	b, err := sign(s, signers)
	if err != nil {
		return nil, fmt.Errorf("anchors: sign v%d: %w", s.Version, err)
	}
	return b, nil
}

func sign(s *Set, signers []crypto.Signer) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	payload, err := protocol.MarshalCanonical(s)
	if err != nil {
		return nil, err
	}
	out, err := signPayload(payload, signers)
	if err != nil {
		return nil, err
	}
	if _, err := parse(out); err != nil { // never hand out what devices refuse
		return nil, err
	}
	return out, nil
}

// signPayload wraps payload in a COSE_Sign with one ES256 signature per
// signer, kid in each signature's protected header.
func signPayload(payload []byte, signers []crypto.Signer) ([]byte, error) {
	if len(signers) == 0 || len(signers) > MaxSignatures {
		return nil, fmt.Errorf("%w: %d signers, want 1 to %d", ErrMalformed, len(signers), MaxSignatures)
	}
	type keyed struct {
		kid    []byte
		signer crypto.Signer
	}
	var ks []keyed
	for _, signer := range signers {
		pub, err := p256(signer.Public())
		if err != nil {
			return nil, fmt.Errorf("%w: signer: %v", ErrMalformed, err)
		}
		kid, err := protocol.KeyID(pub)
		if err != nil {
			return nil, err
		}
		ks = append(ks, keyed{kid, signer})
	}
	slices.SortFunc(ks, func(a, b keyed) int { return bytes.Compare(a.kid, b.kid) })
	msg := cose.NewSignMessage()
	msg.Payload = payload
	coseSigners := make([]cose.Signer, 0, len(ks))
	for i, k := range ks {
		if i > 0 && bytes.Equal(ks[i-1].kid, k.kid) {
			return nil, fmt.Errorf("%w: key %x signs twice", ErrMalformed, k.kid)
		}
		cs, err := cose.NewSigner(cose.AlgorithmES256, k.signer)
		if err != nil {
			return nil, err
		}
		coseSigners = append(coseSigners, cs)
		sig := cose.NewSignature()
		sig.Headers.Protected.SetAlgorithm(cose.AlgorithmES256)
		sig.Headers.Protected[cose.HeaderLabelKeyID] = k.kid
		msg.Signatures = append(msg.Signatures, sig)
	}
	if err := msg.Sign(rand.Reader, externalAAD, coseSigners...); err != nil {
		return nil, err
	}
	for _, sig := range msg.Signatures {
		if len(sig.Signature) != es256Size {
			return nil, fmt.Errorf("signer returned a %d-byte signature, want %d", len(sig.Signature), es256Size)
		}
		lowS(sig.Signature)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, err
	}
	if len(out) > MaxSetSize {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(out), MaxSetSize)
	}
	return out, nil
}

// checkSigners makes sure signers are exactly the two signing keys of by,
// with the errors a device would report, so the server cannot publish a
// set its fleet refuses.
func checkSigners(by *Set, signers []crypto.Signer) error {
	keys, err := by.SigningKeys()
	if err != nil {
		return err
	}
	var seen [2]bool
	for _, signer := range signers {
		i := slices.IndexFunc(keys, func(k *ecdsa.PublicKey) bool { return k.Equal(signer.Public()) })
		if i < 0 {
			return fmt.Errorf("%w: signer is neither the root nor the update key of v%d", ErrUnknownKey, by.Version)
		}
		seen[i] = true
	}
	for i, name := range []string{"root", "update"} {
		if !seen[i] {
			return fmt.Errorf("%w: no signer for the %s key of v%d", ErrMissingSignature, name, by.Version)
		}
	}
	return nil
}

// Genesis signs version 1 of a fleet's anchors with its own root and
// update keys. Devices trust version 1 because it was installed at
// provisioning, not because of these signatures (see TrustOnInstall);
// self-signing still proves the installer was handed a set whose keys work.
// s.Version must be 0 or 1 and s.Prev empty; s is not modified.
func Genesis(s *Set, signers ...crypto.Signer) ([]byte, error) {
	g := *s
	if g.Version == 0 {
		g.Version = 1
	}
	if g.Version != 1 || len(g.Prev) != 0 {
		return nil, fmt.Errorf("anchors: genesis: %w: version %d with prev %x, want version 1 without", ErrMalformed, s.Version, s.Prev)
	}
	if err := g.validate(); err != nil {
		return nil, fmt.Errorf("anchors: genesis: %w", err)
	}
	if err := checkSigners(&g, signers); err != nil {
		return nil, fmt.Errorf("anchors: genesis: %w", err)
	}
	b, err := sign(&g, signers)
	if err != nil {
		return nil, fmt.Errorf("anchors: genesis: %w", err)
	}
	return b, nil
}

// Next issues the set after prev: it fills next's Version (prev's + 1) and
// Prev (prev.Hash()) when they are zero and refuses other values, adds
// prev's revocations to next.Revoked (so next.Revoked may list only the
// newly revoked ids), checks that signers are exactly prev's root and update
// keys, and signs. next is not modified. This is the server's one call to
// rotate anchors; what it returns, appended to the chain, walks.
func Next(prev *Signed, next *Set, signers ...crypto.Signer) ([]byte, error) {
	if prev == nil || prev.Set == nil {
		return nil, fmt.Errorf("anchors: next: %w", ErrNoCurrent)
	}
	if prev.Version == math.MaxUint32 {
		return nil, fmt.Errorf("anchors: next: %w: version space exhausted", ErrMalformed)
	}
	n := *next
	want, h := prev.Version+1, prev.Hash()
	if n.Version == 0 {
		n.Version = want
	}
	if len(n.Prev) == 0 {
		n.Prev = h[:]
	}
	if n.Version != want || !bytes.Equal(n.Prev, h[:]) {
		return nil, fmt.Errorf("anchors: next: %w: version %d, prev %x; after v%d they must be %d, %x",
			ErrMalformed, n.Version, n.Prev, prev.Version, want, h)
	}
	n.Revoked = mergeIDs(prev.Revoked, next.Revoked)
	if err := checkSigners(prev.Set, signers); err != nil {
		return nil, fmt.Errorf("anchors: next v%d: %w", n.Version, err)
	}
	b, err := sign(&n, signers)
	if err != nil {
		return nil, fmt.Errorf("anchors: next v%d: %w", n.Version, err)
	}
	return b, nil
}

// mergeIDs returns the sorted union of two id lists, as a new slice.
func mergeIDs(a, b [][]byte) [][]byte {
	out := make([][]byte, 0, len(a)+len(b))
	for _, id := range slices.Concat(a, b) {
		out = append(out, bytes.Clone(id))
	}
	slices.SortFunc(out, bytes.Compare)
	out = slices.CompactFunc(out, bytes.Equal)
	if len(out) == 0 {
		return nil
	}
	return out
}

// TrustOnInstall parses the set a device is provisioned with and which it
// trusts because of how it got there, not because of any signature. For
// version 1 it also checks the self-signatures of Genesis (a sanity check
// of what the installer holds, not a source of trust). A later version is
// signed by its predecessor's keys, which the installer does not have, so
// it is taken as it is: provision only from a source as trusted as the
// factory.
func TrustOnInstall(b []byte) (*Signed, error) {
	s, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("anchors: install: %w", err)
	}
	if s.Version == 1 {
		if err := verifyBy(s.Set, s, s.IsRevoked); err != nil {
			return nil, fmt.Errorf("anchors: install v1: %w", err)
		}
	}
	return s, nil
}
