package mosquitto

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
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
