package trust_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// sent records what would go out on fleetd's MQTT session.
type sent struct {
	mu       sync.Mutex
	topics   []string
	retained []string
}

func (s *sent) Publish(_ context.Context, topic string, _ []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topics = append(s.topics, topic)
	return nil
}

func (s *sent) PublishRetained(_ context.Context, topic string, _ []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retained = append(s.retained, topic)
	return nil
}

func (s *sent) has(topics []string, want string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range topics {
		if t == want {
			return true
		}
	}
	return false
}

func files(dir string) trust.Files {
	pki := filepath.Join(dir, "pki")
	return trust.Files{Anchors: filepath.Join(pki, "anchors"), CACert: filepath.Join(pki, "ca.pem"),
		UpdateKey: filepath.Join(pki, "update.pub.pem"), ServerCert: filepath.Join(pki, "fleetd.pem"),
		ServerKey: filepath.Join(pki, "fleetd.key"), AdminDir: filepath.Join(dir, "admin"), BirthCA: filepath.Join(pki, "idevid-ca.pem")}
}

// TestServiceRotate: a bootstrapped deployment opens at anchors v1; a
// rotation of the CA and update keys makes v2, issues from the new root,
// re-issues fleetd's certificate under it, publishes the chain (retained
// and live) and a new delegation, audits and reports the change; a
// restart with fleetd's old certificate back on disk re-issues it.
func TestServiceRotate(t *testing.T) {
	dir := t.TempDir()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	f := files(dir)
	if err := trust.Bootstrap(ctx, trust.Options{Files: f, Keys: keys}, []string{"fleet.example"}); err != nil {
		t.Fatal(err)
	}
	oldCert, err := os.ReadFile(f.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	var changes []lifecycle.Change
	pub := &sent{}
	opts := trust.Options{Files: f, Keys: keys, CertValidity: 24 * time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: protocol.NewCodec(), Audit: st, Publisher: pub,
		OnChange: func(c lifecycle.Change) { changes = append(changes, c) }}
	s, err := trust.NewService(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := s.Info()
	if err != nil || v1.Version != 1 {
		t.Fatalf("opened at %+v (%v), want v1", v1, err)
	}
	kid1 := s.Keeper().Current().KID()

	v2, err := s.Rotate(ctx, []string{trust.RoleCA, trust.RoleUpdate}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if v2.Version != 2 || bytes.Equal(v2.RootKeyID, v1.RootKeyID) || bytes.Equal(v2.UpdateKeyID, v1.UpdateKeyID) ||
		!bytes.Equal(v2.FirmwareKeyID, v1.FirmwareKeyID) {
		t.Errorf("after rotating ca and update: got %+v, want v2 with new root and update keys, same firmware key (v1 %+v)", v2, v1)
	}
	root := s.Chain().Root()
	crt, _ := s.GetCertificate(nil)
	if err := crt.Leaf.CheckSignatureFrom(root); err != nil {
		t.Errorf("fleetd's certificate is not under the new root: %v", err)
	}
	if len(crt.Certificate) != 2 {
		t.Errorf("fleetd's chain: got %d certificates, want the leaf and one cross", len(crt.Certificate))
	}
	dev, err := s.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}, PublicKey: crt.Leaf.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.CheckSignatureFrom(root); err != nil {
		t.Errorf("a new certificate is not issued under the new root: %v", err)
	}
	if bytes.Equal(s.Keeper().Current().KID(), kid1) {
		t.Error("the online key was not replaced under the new update key")
	}
	topics := protocol.Topics{}
	if !pub.has(pub.retained, topics.Anchors()) || !pub.has(pub.topics, topics.AnchorsLive()) || !pub.has(pub.topics, topics.Delegation()) {
		t.Errorf("published: retained %v, live %v; want the anchors retained and live, and a delegation", pub.retained, pub.topics)
	}
	want := []string{"anchors v1 superseded", "anchors v2 active"}
	if len(changes) != 2 || changes[0].String() != want[0] || changes[1].String() != want[1] {
		t.Errorf("changes: got %v, want %v", changes, want)
	}
	audited := 0
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Action == "anchors-rotated" && r.Version == 2 && r.Actor == "admin:test" {
			audited++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if audited != 1 {
		t.Errorf("audit: %d anchors-rotated records for v2, want 1", audited)
	}

	// A crash between writing the set and replacing the certificate: the
	// next start finishes it.
	if err := os.WriteFile(f.ServerCert, oldCert, 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := trust.NewService(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Chain().AnchorVersion(); got != 2 {
		t.Errorf("reopened at v%d, want v2", got)
	}
	crt2, _ := s2.GetCertificate(nil)
	if err := crt2.Leaf.CheckSignatureFrom(s2.Chain().Root()); err != nil {
		t.Errorf("reopened with a certificate not under the current root: %v", err)
	}
	if b, _ := os.ReadFile(f.ServerCert); bytes.Equal(b, oldCert) {
		t.Error("the re-issued certificate was not written")
	}
}
