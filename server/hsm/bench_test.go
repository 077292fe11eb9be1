package hsm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

func benchSigner(b *testing.B) crypto.Signer {
	b.Helper()
	cfg := fleettest.NewToken(b)
	tok, err := hsm.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tok.Close() })
	s, err := tok.GenerateP256("bench")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkTokenSignP256 is the raw HSM rate every other figure is a ratio
// of: one ECDSA P-256 signature in SoftHSM2 through crypto11, the key type
// and path fleetd's CA uses.
func BenchmarkTokenSignP256(b *testing.B) {
	s := benchSigner(b)
	digest := sha256.Sum256([]byte("keyfleet"))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTokenIssueCertificate is certificate issuance as the rotation
// engine does it: a device certificate signed by the CA key in the token.
func BenchmarkTokenIssueCertificate(b *testing.B) {
	s := benchSigner(b)
	root, err := certs.NewRoot(s, "bench CA", time.Now(), time.Hour*24*365)
	if err != nil {
		b.Fatal(err)
	}
	ca, err := certs.NewCA(root, s, certs.CAOptions{})
	if err != nil {
		b.Fatal(err)
	}
	key, err := device.NewKey()
	if err != nil {
		b.Fatal(err)
	}
	req := certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "bench-device"}, PublicKey: &key.PublicKey}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.Issue(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
