package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// Shared fixtures of the protocol tests.

// testNow is the clock of every example message: fixed, so that encodings
// and sizes do not drift from run to run.
var testNow = time.Unix(1_700_000_000, 0)

// testDevice is the device id of the examples.
const testDevice = "dev-000042"

// fixedKey derives a P-256 key from a label. The fuzz seeds and the corpus
// files under testdata/fuzz are signed with such keys, so they must not
// change between runs; tests that need a throwaway key generate one.
func fixedKey(tb testing.TB, label string) *ecdsa.PrivateKey {
	tb.Helper()
	d := sha256.Sum256([]byte("keyfleet protocol test key: " + label))
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

func keyID(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	tb.Helper()
	kid, err := KeyID(&k.PublicKey)
	if err != nil {
		tb.Fatalf("KeyID: %v", err)
	}
	return kid
}

// unhex decodes hex written for people: spaces, newlines and comments
// starting with '#' up to the end of the line are ignored.
func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	var clean strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		tb.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// id returns an 8-byte id whose bytes are b, b+1, ... so that ids are
// recognisable in hex dumps.
func id(b byte) []byte {
	out := make([]byte, MessageIDSize)
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}

// realistic holds a CSR and a certificate as a device and the fleet CA
// would produce them, built once per test binary.
type realistic struct {
	csr     []byte // PKCS#10, P-256, CN=device id (as device.CSR makes it)
	cert    []byte // DER leaf, P-256, issued by a P-256 CA (as certs.CA issues it)
	onlineK []byte // PKIX SubjectPublicKeyInfo of an online signing key
	devKey  *ecdsa.PrivateKey
	ca      *x509.Certificate
}

var (
	realOnce sync.Once
	realMat  realistic
	realErr  error
)

func realisticMaterial(tb testing.TB) realistic {
	tb.Helper()
	realOnce.Do(func() { realMat, realErr = buildRealistic() })
	if realErr != nil {
		tb.Fatalf("realistic material: %v", realErr)
	}
	return realMat
}

func buildRealistic() (realistic, error) {
	var r realistic
	gen := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	devKey, err := gen()
	if err != nil {
		return r, err
	}
	caKey, err := gen()
	if err != nil {
		return r, err
	}
	online, err := gen()
	if err != nil {
		return r, err
	}
	uri, err := url.Parse("urn:keyfleet:device:" + testDevice)
	if err != nil {
		return r, err
	}
	r.csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: testDevice},
	}, devKey)
	if err != nil {
		return r, err
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keyfleet fleet CA"},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
		SubjectKeyId:          []byte{1, 2, 3, 4, 5, 6, 7, 8}, // an 8-byte key id, as certs.NewRoot sets
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return r, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return r, err
	}
	// A leaf as certs.CA issues it for the CSR: 72-bit serial, the
	// subject of the request and the identity URI, client-auth usage, the
	// authority key id.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 72))
	if err != nil {
		return r, err
	}
	leaf := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: testDevice},
		URIs:         []*url.URL{uri},
		NotBefore:    testNow,
		NotAfter:     testNow.Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	r.cert, err = x509.CreateCertificate(rand.Reader, leaf, ca, &devKey.PublicKey, caKey)
	if err != nil {
		return r, err
	}
	r.devKey, r.ca = devKey, ca
	r.onlineK, err = x509.MarshalPKIXPublicKey(&online.PublicKey)
	return r, err
}

// examples returns one valid message of every type, with realistic content
// and a fixed clock, and the header fields fleetd and the agent set (a
// command carries an expiry and no issued-at; a retire no rotation id).
// Each call returns fresh values.
func examples(tb testing.TB) []Message {
	tb.Helper()
	r := realisticMaterial(tb)
	iat := uint64(testNow.Unix())
	exp := uint64(testNow.Add(24 * time.Hour).Unix())
	rid := id(0xa0)
	return []Message{
		&Hello{Header: Header{ID: id(0x10), IAT: iat},
			Slots: []SlotVersion{{Slot: SlotIdentity, Active: 3, Pending: 4, Previous: 2}}},
		&Rotate{Header: Header{ID: id(0x20), RID: rid, Exp: exp}, Slot: SlotIdentity, Version: 4},
		&Enroll{Header: Header{ID: id(0x30), RID: rid, IAT: iat}, Slot: SlotIdentity, Version: 4, CSR: r.csr},
		&Cert{Header: Header{ID: id(0x40), RID: rid}, Slot: SlotIdentity, Version: 4, Cert: r.cert},
		&Activated{Header: Header{ID: id(0x50), RID: rid, IAT: iat}, Slot: SlotIdentity, Version: 4},
		&Retire{Header: Header{ID: id(0x60), Exp: exp}, Slot: SlotIdentity, Version: 3},
		&Error{Header: Header{ID: id(0x70), RID: rid, IAT: iat}, Code: CodeBadCSR, Ref: id(0x30),
			Detail: "csr subject does not match device"},
		&Delegation{Header: Header{ID: id(0x80), IAT: iat}, Key: r.onlineK,
			NotBefore: iat, NotAfter: iat + 12*3600},
		&Hello{Header: Header{ID: id(0x11), IAT: iat},
			Slots:      []SlotVersion{{Slot: SlotIdentity, Active: 5}},
			Delegation: id(0x81), Anchors: 3, DataKeys: []uint32{2, 3, 4}, Firmware: 7},
		&Key{Header: Header{ID: id(0x90), Exp: exp}, Slot: SlotData, Version: 4, Status: KeyStatusPrimary,
			Sealed: bytes.Repeat([]byte{0xd0}, 120)},
		&Reenroll{Header: Header{ID: id(0xa1), RID: id(0xa2), IAT: iat}, CSR: r.csr, Anchors: 1},
		&Anchors{Header: Header{ID: id(0xb0)}, Sets: [][]byte{bytes.Repeat([]byte{0xb1}, 40), bytes.Repeat([]byte{0xb2}, 40)}},
		&Firmware{Header: Header{ID: id(0xc0)}, Manifest: bytes.Repeat([]byte{0xc1}, 60)},
	}
}

// encode returns the packet a sender would publish for m: sealed with key
// for signed types, bare for Cert.
func encode(tb testing.TB, c *Codec, m Message, key *ecdsa.PrivateKey) []byte {
	tb.Helper()
	var (
		b   []byte
		err error
	)
	if Signed(TypeOf(m)) {
		b, err = c.Seal(m, key, "")
	} else {
		b, err = c.Bare(m)
	}
	if err != nil {
		tb.Fatalf("encode %v: %v", TypeOf(m), err)
	}
	return b
}

// receive runs the receiver's pipeline on a packet: Open, Verify with pub
// when the envelope is signed, then Message.
func receive(c *Codec, data []byte, pub *ecdsa.PublicKey) (Message, error) {
	env, err := c.Open(data)
	if err != nil {
		return nil, err
	}
	if env.IsSigned() {
		if err := env.Verify(pub, ""); err != nil {
			return nil, err
		}
	}
	return c.Message(env)
}

// signSign1WithKID builds a COSE_Sign1 in our layout, signed by k but
// naming kid, which SignSign1 never does: the tests of a kid that lies.
func signSign1WithKID(tb testing.TB, k *ecdsa.PrivateKey, kid, payload, aad []byte) []byte {
	tb.Helper()
	protected := append(bytes.Clone(sign1ProtectedPrefix), kid...)
	digest, err := sign1Digest(protected, payload, aad)
	if err != nil {
		tb.Fatal(err)
	}
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, es256SignatureSize)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	body, err := MarshalCanonical(&sign1{Protected: protected, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	if err != nil {
		tb.Fatal(err)
	}
	return append([]byte{0xd2}, body...)
}

// onWire returns m as the receiver decodes it: a Cert's certificate
// compact (CompactLeaf), everything else as it is.
func onWire(tb testing.TB, m Message) Message {
	tb.Helper()
	c, ok := m.(*Cert)
	if !ok {
		return m
	}
	compact, err := CompactLeaf(c.Cert)
	if err != nil {
		tb.Fatal(err)
	}
	cc := *c
	cc.Cert = compact
	return &cc
}
