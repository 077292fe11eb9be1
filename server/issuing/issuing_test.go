package issuing_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.step.sm/crypto/jose"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/issuing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		kind string
		ok   bool
	}{
		{"", true}, {issuing.KindEmbedded, true}, {issuing.KindStepCA, true}, {"vault", false}, {"StepCA", false},
	} {
		err := issuing.Config{Kind: tc.kind}.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("kind %q: %v, want ok %v", tc.kind, err, tc.ok)
		}
	}
}

// TestEmbeddedIsUnchanged: with the embedded CA, Open hands back the CA,
// the broker's trust and the revoker untouched.
func TestEmbeddedIsUnchanged(t *testing.T) {
	keys, err := hsm.OpenSoftKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ca certs.Issuer = &certs.CA{}
	iss, err := issuing.Open(context.Background(), issuing.Config{}, ca, keys, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if iss.Issuer != ca {
		t.Error("the embedded CA was replaced")
	}
	tr := broker.StaticTrust{Identity: x509.NewCertPool()}
	if got := iss.Trust(tr); got != (broker.Trust)(tr) {
		t.Error("the broker's trust was wrapped")
	}
	if got := iss.Revoker(nil, nil); got != nil {
		t.Error("the revoker was wrapped")
	}
	if err := issuing.Init(issuing.Config{}, keys, t.TempDir(), slog.Default()); err != nil {
		t.Fatal(err)
	}
}

// TestInitAndOpenStepCA: init makes the provisioner key once and writes
// its public JWK; Open refuses a step-ca configuration with parts missing
// or a key that is not in the token, before any network.
func TestInitAndOpenStepCA(t *testing.T) {
	keys, err := hsm.OpenSoftKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := issuing.Config{Kind: issuing.KindStepCA, StepCAProvisioner: "keyfleet"}
	if err := issuing.Init(cfg, keys, dir, slog.Default()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, issuing.JWKFile))
	if err != nil {
		t.Fatal(err)
	}
	var jwk jose.JSONWebKey
	if err := json.Unmarshal(b, &jwk); err != nil {
		t.Fatal(err)
	}
	k, err := keys.Signer(issuing.LabelProvisioner)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(*ecdsa.PublicKey).Equal(jwk.Key) || jwk.KeyID == "" || jwk.Algorithm != "ES256" {
		t.Errorf("JWK %s is not the token's provisioner key", b)
	}
	again, err := issuing.ProvisionerJWK(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	var jwk2 jose.JSONWebKey
	if err := json.Unmarshal(again, &jwk2); err != nil || jwk2.KeyID != jwk.KeyID {
		t.Errorf("a second init made another key (%v)", err)
	}

	for _, tc := range []struct {
		name string
		cfg  issuing.Config
		want string
	}{
		{"no URL", issuing.Config{Kind: issuing.KindStepCA, StepCARoot: "r.pem", StepCAProvisioner: "p"}, "needs --stepca-url"},
		{"no root", issuing.Config{Kind: issuing.KindStepCA, StepCAURL: "https://127.0.0.1:1", StepCAProvisioner: "p"}, "needs --stepca-url"},
		{"no provisioner", issuing.Config{Kind: issuing.KindStepCA, StepCAURL: "https://127.0.0.1:1", StepCARoot: "r.pem"}, "needs --stepca-url"},
		{"no key", issuing.Config{Kind: issuing.KindStepCA, StepCAURL: "https://127.0.0.1:1", StepCARoot: "r.pem", StepCAProvisioner: "p", StepCAKey: "missing"}, `provisioner key "missing"`},
		{"unknown kind", issuing.Config{Kind: "vault"}, "unknown issuer"},
	} {
		_, err := issuing.Open(context.Background(), tc.cfg, nil, keys, slog.Default())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
