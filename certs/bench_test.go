package certs_test

import (
	"context"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
)

// BenchmarkCAIssueInMemory issues with an in-memory CA key: the cost of
// building and encoding a certificate without the HSM, to set beside
// BenchmarkTokenIssueCertificate in server/hsm.
func BenchmarkCAIssueInMemory(b *testing.B) {
	key := newP256(b)
	root, err := certs.NewRoot(key, "bench CA", time.Now(), 365*24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ca, err := certs.NewCA(root, key, certs.CAOptions{})
	if err != nil {
		b.Fatal(err)
	}
	leafKey := newP256(b)
	req := certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "bench-device"}, PublicKey: &leafKey.PublicKey}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.Issue(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
