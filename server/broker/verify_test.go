package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/policy"
)

func key(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestClassify is the broker's authentication decision, case by case.
func TestClassify(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	rk, bk := key(t), key(t)
	root, _ := certs.NewRoot(rk, "fleet", now.Add(-400*day), 3650*day)
	birthRoot, _ := certs.NewRoot(bk, "factory", now.Add(-400*day), 3650*day)
	ca := func(r *x509.Certificate, k *ecdsa.PrivateKey, at time.Time, validity time.Duration) *certs.CA {
		c, err := certs.NewCA(r, k, certs.CAOptions{Validity: validity, Now: func() time.Time { return at }})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	issue := func(c *certs.CA, role identity.Role) *x509.Certificate {
		crt, err := c.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: role, Name: "dev-1"}, PublicKey: key(t).Public()})
		if err != nil {
			t.Fatal(err)
		}
		return crt
	}
	pol := policy.Default()
	pol.RenewAfterExpiry = policy.Duration(100 * day)
	trust := broker.StaticTrust{Identity: pool(root), Birth: pool(birthRoot)}
	valid := issue(ca(root, rk, now.Add(-10*day), 90*day), identity.RoleDevice)
	expiredRecently := issue(ca(root, rk, now.Add(-120*day), 90*day), identity.RoleDevice) // expired 30 days ago
	expiredLong := issue(ca(root, rk, now.Add(-300*day), 90*day), identity.RoleDevice)     // expired 210 days ago
	birth := issue(ca(birthRoot, bk, now.Add(-300*day), 3000*day), identity.RoleIDevID)
	birthFromFleetCA := issue(ca(root, rk, now.Add(-day), 90*day), identity.RoleIDevID)
	deviceFromFactory := issue(ca(birthRoot, bk, now.Add(-day), 90*day), identity.RoleDevice)
	fk := key(t)
	foreign := issue(ca(mustRoot(t, fk), fk, now.Add(-day), 90*day), identity.RoleDevice)
	admin := func() *x509.Certificate {
		c, _ := ca(root, rk, now.Add(-day), 90*day).Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleAdmin, Name: "alice"}, PublicKey: key(t).Public()})
		return c
	}()
	tests := []struct {
		name string
		leaf *x509.Certificate
		want policy.Access
		ok   bool
	}{
		{"valid identity", valid, policy.AccessFull, true},
		{"expired within the renewal window", expiredRecently, policy.AccessRenew, true},
		{"expired past the renewal window", expiredLong, policy.AccessExpired, false},
		{"birth credential", birth, policy.AccessEnroll, true},
		{"birth role from the fleet CA", birthFromFleetCA, policy.AccessNone, false},
		{"identity from the factory CA", deviceFromFactory, policy.AccessNone, false},
		{"foreign CA", foreign, policy.AccessNone, false},
		{"operator certificate", admin, policy.AccessNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, err := broker.Classify([]*x509.Certificate{tt.leaf}, trust, pol, now)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("Classify: got %v, err %v; want %v, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func pool(cs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}

func mustRoot(t *testing.T, k *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	r, err := certs.NewRoot(k, "elsewhere", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 3650*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// swappableTrust is a Trust whose roots change, as anchor rotation changes
// fleetd's.
type swappableTrust struct{ roots, birth *x509.CertPool }

func (s *swappableTrust) Roots() *x509.CertPool      { return s.roots }
func (s *swappableTrust) BirthRoots() *x509.CertPool { return s.birth }

// TestChainsToFleet is the handshake's check: any certificate from one of
// the fleet's CAs passes whatever its expiry or role (the auth hook decides
// those); anything else fails.
func TestChainsToFleet(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	rk, bk, nk := key(t), key(t), key(t)
	root, _ := certs.NewRoot(rk, "fleet", now.Add(-400*day), 3650*day)
	newRoot, _ := certs.NewRoot(nk, "fleet 2", now.Add(-day), 3650*day)
	birthRoot, _ := certs.NewRoot(bk, "factory", now.Add(-400*day), 3650*day)
	issue := func(r *x509.Certificate, k *ecdsa.PrivateKey, at time.Time, role identity.Role) *x509.Certificate {
		c, err := certs.NewCA(r, k, certs.CAOptions{Validity: 90 * day, Now: func() time.Time { return at }})
		if err != nil {
			t.Fatal(err)
		}
		crt, err := c.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: role, Name: "dev-1"}, PublicKey: key(t).Public()})
		if err != nil {
			t.Fatal(err)
		}
		return crt
	}
	sk := key(t)
	selfSigned, _ := certs.NewRoot(sk, "dev-1", now.Add(-day), 90*day)
	fk := key(t)
	foreignRoot := mustRoot(t, fk)
	trust := &swappableTrust{roots: pool(root), birth: pool(birthRoot)}
	tests := []struct {
		name  string
		chain []*x509.Certificate
		ok    bool
	}{
		{"valid identity", []*x509.Certificate{issue(root, rk, now.Add(-10*day), identity.RoleDevice)}, true},
		{"identity expired long ago", []*x509.Certificate{issue(root, rk, now.Add(-300*day), identity.RoleDevice)}, true},
		{"birth credential", []*x509.Certificate{issue(birthRoot, bk, now.Add(-day), identity.RoleIDevID)}, true},
		{"operator certificate from the fleet CA", []*x509.Certificate{issue(root, rk, now.Add(-day), identity.RoleAdmin)}, true},
		{"self-signed", []*x509.Certificate{selfSigned}, false},
		{"self-signed with the fleet root appended", []*x509.Certificate{selfSigned, root}, false},
		{"foreign CA", []*x509.Certificate{issue(foreignRoot, fk, now.Add(-day), identity.RoleDevice)}, false},
		{"a root added later, before it is added", []*x509.Certificate{issue(newRoot, nk, now.Add(-day), identity.RoleDevice)}, false},
		{"no certificate", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := broker.ChainsToFleet(tt.chain, trust, now); (err == nil) != tt.ok {
				t.Errorf("ChainsToFleet: got %v, want ok %v", err, tt.ok)
			}
		})
	}
	t.Run("a root added later, once added", func(t *testing.T) {
		trust.roots = pool(root, newRoot) // read at each check: no restart
		if err := broker.ChainsToFleet([]*x509.Certificate{issue(newRoot, nk, now.Add(-day), identity.RoleDevice)}, trust, now); err != nil {
			t.Errorf("ChainsToFleet: got %v, want nil", err)
		}
	})
	t.Run("no roots at all", func(t *testing.T) {
		empty := broker.StaticTrust{}
		if err := broker.ChainsToFleet([]*x509.Certificate{issue(root, rk, now.Add(-day), identity.RoleDevice)}, empty, now); err == nil {
			t.Error("ChainsToFleet with no roots: got nil, want an error (never the system roots)")
		}
	})
}
