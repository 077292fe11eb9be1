package dynsec

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// The CRL lists the versions no broker may accept any more (retired,
// revoked, failed, cancelled) while their certificate has not expired; the
// live versions, those without a certificate and expired ones are left out.
func TestRefusedOf(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert := func(serial int64, notAfter time.Time) []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dev"},
			NotBefore: now.Add(-time.Hour), NotAfter: notAfter}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	later, earlier := now.Add(time.Hour), now.Add(-time.Minute)
	var versions []*lifecycle.KeyVersion
	for i, tc := range []struct {
		state    lifecycle.State
		notAfter time.Time
		noCert   bool
	}{
		{lifecycle.StateRetired, later, false},   // 1: listed
		{lifecycle.StateRevoked, later, false},   // 2: listed
		{lifecycle.StateFailed, later, false},    // 3: listed
		{lifecycle.StateCancelled, later, true},  // 4: never issued
		{lifecycle.StateRetired, earlier, false}, // 5: expired
		{lifecycle.StateSuperseded, later, false},
		{lifecycle.StateActive, later, false},
		{lifecycle.StateIssued, later, false},
	} {
		k := &lifecycle.KeyVersion{Version: uint32(i + 1), State: tc.state, NotAfter: tc.notAfter}
		if !tc.noCert {
			k.Cert = cert(int64(i+1), tc.notAfter)
		}
		versions = append(versions, k)
	}
	d := &store.Device{ID: "dev", Slots: map[protocol.Slot]*store.SlotState{protocol.SlotIdentity: {Versions: versions}}}
	var got []int64
	for _, r := range refusedOf(d, now) {
		got = append(got, r.Cert.SerialNumber.Int64())
		if !r.At.Equal(now) { // RetiredAt unset: listed as of now
			t.Errorf("serial %v listed at %v, want now", r.Cert.SerialNumber, r.At)
		}
	}
	if !slices.Equal(got, []int64{1, 2, 3}) {
		t.Errorf("listed serials %v, want [1 2 3]", got)
	}
	if r := refusedOf(&store.Device{ID: "new"}, now); len(r) != 0 {
		t.Errorf("a device without identity slot: %d listed", len(r))
	}
}
