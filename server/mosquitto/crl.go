package mosquitto

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"slices"
	"time"
)

// CRLPEM is one root's certificate revocation list as PEM, signed by the
// root's key (in fleetd's HSM): serials are the certificates it issued
// that the broker must refuse in the TLS handshake, which the
// dynamic-security plugin cannot (every version of a device has one
// common name). number must grow with every list of the same root; the
// list is valid until next. Mosquitto, once given a crlfile, refuses every
// certificate whose issuer has no CRL in it: the file needs one list per
// root of the CA file, even an empty one.
func CRLPEM(root *x509.Certificate, key crypto.Signer, serials []*big.Int, number *big.Int, now, next time.Time) ([]byte, error) {
	entries := make([]x509.RevocationListEntry, 0, len(serials))
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	return signCRL(root, key, entries, number, now, next)
}

func signCRL(root *x509.Certificate, key crypto.Signer, entries []x509.RevocationListEntry, number *big.Int, now, next time.Time) ([]byte, error) {
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: number, ThisUpdate: now, NextUpdate: next, RevokedCertificateEntries: entries,
	}, root, key)
	if err != nil {
		return nil, fmt.Errorf("mosquitto: CRL of %s: %w", root.Subject, err)
	}
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: "X509 CRL", Bytes: der}); err != nil {
		return nil, fmt.Errorf("mosquitto: CRL of %s: %w", root.Subject, err)
	}
	return b.Bytes(), nil
}

// Refused is a certificate the broker must refuse: a retired or revoked
// version of a device's identity.
type Refused struct {
	Cert *x509.Certificate
	// At is when it was retired or revoked (the entry's revocation time).
	At time.Time
}

// CRLOptions shape the CRL file.
type CRLOptions struct {
	// Now is the signing time.
	Now time.Time
	// Validity is how long a list stays valid (its nextUpdate): a broker
	// refuses every certificate of a root whose list has expired, so
	// fleetd signs the lists again when less than half of it remains.
	Validity time.Duration
	// Keep is how long an entry of the previous file whose certificate the
	// store no longer names (the store keeps a few dead versions per
	// device) stays listed: the longest certificate validity, after which
	// the certificate has expired anyway.
	Keep time.Duration
}

// CRLPlan is the outcome of PlanCRLFile.
type CRLPlan struct {
	// PEM is the new file; nil when the file already lists what it must
	// and is fresh enough.
	PEM []byte
	// ThisUpdate is the new lists' signing time. It may lie up to a
	// second ahead of Now (see PlanCRLFile): write the file only once it
	// has passed.
	ThisUpdate time.Time
	// Listed counts the entries, Unknown the refused certificates no root
	// issued (an external issuer's), which no list can carry.
	Listed, Unknown int
}

// PlanCRLFile makes the broker's CRL file: one list per distinct root,
// signed with the key sign returns for it, listing the refused
// certificates that root issued plus the entries of the previous file
// (old) younger than o.Keep. It returns no file when old already lists
// exactly that and every list is valid for more than half of o.Validity.
//
// OpenSSL, which keeps the lists it read before when Mosquitto re-reads
// its crlfile, takes the one with the latest thisUpdate among equally
// good ones, at a one-second resolution: so a new list's thisUpdate is
// later than the previous one's by at least a second.
func PlanCRLFile(roots []*x509.Certificate, sign func(*x509.Certificate) (crypto.Signer, error), refused []Refused,
	old []*x509.RevocationList, o CRLOptions) (CRLPlan, error) {
	var plan CRLPlan
	var uniq []*x509.Certificate
	for _, r := range roots {
		if !slices.ContainsFunc(uniq, r.Equal) {
			uniq = append(uniq, r)
		}
	}
	if len(uniq) == 0 {
		return plan, errors.New("mosquitto: CRL file: no roots")
	}
	lists := make([]map[string]x509.RevocationListEntry, len(uniq))
	for i := range lists {
		lists[i] = map[string]x509.RevocationListEntry{}
	}
	for _, r := range refused {
		i := slices.IndexFunc(uniq, func(root *x509.Certificate) bool {
			return bytes.Equal(r.Cert.RawIssuer, root.RawSubject) &&
				(len(r.Cert.AuthorityKeyId) == 0 || bytes.Equal(r.Cert.AuthorityKeyId, root.SubjectKeyId))
		})
		if i < 0 {
			plan.Unknown++
			continue
		}
		lists[i][r.Cert.SerialNumber.String()] = x509.RevocationListEntry{SerialNumber: r.Cert.SerialNumber, RevocationTime: r.At.UTC().Truncate(time.Second)}
	}
	prev := make([]*x509.RevocationList, len(uniq)) // the previous list of each root
	number, last := new(big.Int), time.Time{}
	for _, l := range old {
		if l.Number != nil && l.Number.Cmp(number) > 0 {
			number.Set(l.Number)
		}
		if l.ThisUpdate.After(last) {
			last = l.ThisUpdate
		}
		i := slices.IndexFunc(uniq, func(root *x509.Certificate) bool { return l.CheckSignatureFrom(root) == nil })
		if i < 0 {
			continue // a root no longer in the chain
		}
		prev[i] = l
		for _, e := range l.RevokedCertificateEntries {
			if _, ok := lists[i][e.SerialNumber.String()]; !ok && o.Now.Sub(e.RevocationTime) < o.Keep {
				lists[i][e.SerialNumber.String()] = x509.RevocationListEntry{SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime}
			}
		}
	}
	same := true
	for i, l := range prev {
		plan.Listed += len(lists[i])
		if l == nil || l.NextUpdate.Sub(o.Now) <= o.Validity/2 || len(l.RevokedCertificateEntries) != len(lists[i]) {
			same = false
			continue
		}
		for _, e := range l.RevokedCertificateEntries {
			if _, ok := lists[i][e.SerialNumber.String()]; !ok {
				same = false
			}
		}
	}
	if same {
		return plan, nil
	}
	plan.ThisUpdate = o.Now.UTC().Truncate(time.Second)
	if !plan.ThisUpdate.After(last) {
		plan.ThisUpdate = last.UTC().Add(time.Second)
	}
	if n := big.NewInt(plan.ThisUpdate.Unix()); n.Cmp(number) > 0 {
		number = n
	} else {
		number.Add(number, big.NewInt(1))
	}
	var b bytes.Buffer
	for i, root := range uniq {
		key, err := sign(root)
		if err != nil {
			return plan, fmt.Errorf("mosquitto: CRL of %s: %w", root.Subject, err)
		}
		entries := make([]x509.RevocationListEntry, 0, len(lists[i]))
		for _, e := range lists[i] {
			entries = append(entries, e)
		}
		slices.SortFunc(entries, func(a, b x509.RevocationListEntry) int { return a.SerialNumber.Cmp(b.SerialNumber) })
		p, err := signCRL(root, key, entries, number, plan.ThisUpdate, plan.ThisUpdate.Add(o.Validity))
		if err != nil {
			return plan, err
		}
		b.Write(p)
	}
	plan.PEM = b.Bytes()
	return plan, nil
}

// ReadCRLFile returns the lists in the CRL file at path; none if it does
// not exist yet.
func ReadCRLFile(path string) ([]*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("mosquitto: CRL file: %w", err)
	}
	var out []*x509.RevocationList
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out, nil
		}
		if blk.Type != "X509 CRL" {
			continue
		}
		l, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("mosquitto: CRL file %s: %w", path, err)
		}
		out = append(out, l)
	}
}

// WriteCRLFile replaces path with b atomically (see WriteCAFile).
func WriteCRLFile(path string, b []byte) (changed bool, err error) {
	return writeFile(path, "CRL file", b)
}
