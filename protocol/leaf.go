package protocol

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// A certificate delivery (Cert) carries the DER leaf without its
// SubjectPublicKeyInfo: the device generated that key and sent it in its
// CSR, so the 91 bytes of a P-256 key would only travel back to where they
// came from. Codec.Marshal removes the key from a full certificate; the
// device puts its own pending key back (ExpandLeaf) and then checks the
// result exactly as it would check a full delivery: the CA's signature
// covers the TBSCertificate with the key in it, so a certificate issued
// for any other key fails the chain check, and the leaf-key comparison
// still runs on what it parsed.
//
// On the wire the compact leaf is the certificate with the
// subjectPublicKeyInfo element removed from the TBSCertificate and the
// lengths of the TBSCertificate and the Certificate re-encoded (DER):
//
//	Certificate ::= SEQUENCE {
//	  tbsCertificate SEQUENCE {
//	    [0] version, serialNumber, signature, issuer, validity, subject,
//	    -- subjectPublicKeyInfo removed --
//	    [1] issuerUniqueID?, [2] subjectUniqueID?, [3] extensions? },
//	  signatureAlgorithm, signatureValue }

// errNotCertificate: bytes that are not the DER of an X.509 certificate.
var errNotCertificate = errors.New("not a DER certificate")

// leaf is a certificate split into the parts CompactLeaf and ExpandLeaf
// move: the TBSCertificate's elements before and after the key, the key
// itself (nil in a compact leaf), and what follows the TBSCertificate.
type leaf struct {
	head, spki, rest []byte // TBSCertificate elements, each complete DER
	tail             []byte // signatureAlgorithm and signatureValue
}

// parseLeaf splits a full or compact DER certificate.
func parseLeaf(der []byte) (*leaf, error) {
	var cert asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &cert); err != nil || len(rest) != 0 || !isSequence(cert) {
		return nil, errNotCertificate
	}
	var tbs asn1.RawValue
	tail, err := asn1.Unmarshal(cert.Bytes, &tbs)
	if err != nil || !isSequence(tbs) || len(tail) == 0 {
		return nil, errNotCertificate
	}
	var elems []asn1.RawValue
	for b := tbs.Bytes; len(b) > 0; {
		var e asn1.RawValue
		if b, err = asn1.Unmarshal(b, &e); err != nil {
			return nil, errNotCertificate
		}
		elems = append(elems, e)
	}
	// serialNumber, signature, issuer, validity, subject: five elements,
	// after the version if there is one.
	n := 5
	if len(elems) > 0 && elems[0].Class == asn1.ClassContextSpecific && elems[0].Tag == 0 {
		n++
	}
	if len(elems) < n {
		return nil, errNotCertificate
	}
	l := &leaf{tail: tail}
	for _, e := range elems[:n] {
		l.head = append(l.head, e.FullBytes...)
	}
	rest := elems[n:]
	if len(rest) > 0 && isSequence(rest[0]) {
		l.spki = rest[0].FullBytes
		rest = rest[1:]
	}
	for _, e := range rest {
		if e.Class != asn1.ClassContextSpecific {
			return nil, errNotCertificate
		}
		l.rest = append(l.rest, e.FullBytes...)
	}
	return l, nil
}

func isSequence(v asn1.RawValue) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound
}

// encode reassembles the certificate with spki as its key (nil: compact).
func (l *leaf) encode(spki []byte) ([]byte, error) {
	tbs, err := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true,
		Bytes: bytes.Join([][]byte{l.head, spki, l.rest}, nil)})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: append(tbs, l.tail...)})
}

// CompactLeaf returns der, a DER certificate, without its
// SubjectPublicKeyInfo; anything else (a leaf that is already compact, or
// bytes that are no certificate, for the device to refuse) comes back as
// it is. It refuses a key that is not in the canonical DER form
// x509.MarshalPKIXPublicKey writes, since ExpandLeaf could not restore it.
func CompactLeaf(der []byte) ([]byte, error) {
	l, err := parseLeaf(der)
	if err != nil || l.spki == nil {
		return der, nil
	}
	pub, err := x509.ParsePKIXPublicKey(l.spki)
	if err != nil {
		return nil, fmt.Errorf("protocol: compact leaf: key: %w", err)
	}
	if again, err := x509.MarshalPKIXPublicKey(pub); err != nil || !bytes.Equal(again, l.spki) {
		return nil, errors.New("protocol: compact leaf: key not in canonical DER")
	}
	out, err := l.encode(nil)
	if err != nil {
		return nil, fmt.Errorf("protocol: compact leaf: %w", err)
	}
	return out, nil
}

// ExpandLeaf restores the certificate CompactLeaf made from a leaf for
// pub: the device passes the pending key it generated. It checks no
// signature; the caller verifies the result as any certificate, and one
// that was not issued for pub fails there. A leaf that still carries a key
// is refused (ErrMalformed): deliveries are compact.
func ExpandLeaf(compact []byte, pub crypto.PublicKey) ([]byte, error) {
	l, err := parseLeaf(compact)
	if err != nil {
		return nil, fmt.Errorf("%w: cert: %v", ErrMalformed, err)
	}
	if l.spki != nil {
		return nil, fmt.Errorf("%w: cert: delivered with its key, want the compact leaf", ErrMalformed)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("protocol: expand leaf: %w", err)
	}
	out, err := l.encode(spki)
	if err != nil {
		return nil, fmt.Errorf("protocol: expand leaf: %w", err)
	}
	return out, nil
}

// checkNotFullLeaf is Cert's shape rule for the decoder: the certificate
// must not carry its key. Anything else is left to the device, whose
// ExpandLeaf refuses what is not a compact leaf and whose chain check
// refuses what the CA did not sign.
func checkNotFullLeaf(der []byte) error {
	if l, err := parseLeaf(der); err == nil && l.spki != nil {
		return fmt.Errorf("%w: cert delivered with its key, want the compact leaf", ErrMalformed)
	}
	return nil
}
