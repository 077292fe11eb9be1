package hsm_test

import (
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// TestDeploymentKeysNonExtractable is the acceptance check: the private keys
// of a deployment made by server.Init, read back over PKCS#11, are sensitive
// and not extractable.
func TestDeploymentKeysNonExtractable(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	cfg := f.Config.HSM
	for _, label := range []string{server.LabelCA, server.LabelUpdate} {
		t.Run(label, func(t *testing.T) {
			sensitive, extractable, err := hsm.KeyAttributes(cfg.Module, cfg.TokenLabel, cfg.PIN, label)
			if err != nil {
				t.Fatalf("KeyAttributes(%s): got error %v, want nil", hsm.KeyURI(cfg.TokenLabel, label), err)
			}
			if !sensitive {
				t.Errorf("CKA_SENSITIVE of %s: got false, want true", hsm.KeyURI(cfg.TokenLabel, label))
			}
			if extractable {
				t.Errorf("CKA_EXTRACTABLE of %s: got true, want false", hsm.KeyURI(cfg.TokenLabel, label))
			}
		})
	}
	t.Run("exactly one key per label", func(t *testing.T) {
		// Init generates each key once; a second private key under the same
		// label would make Signer ambiguous.
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatalf("Open: got error %v, want nil", err)
		}
		defer tok.Close()
		for _, label := range []string{server.LabelCA, server.LabelUpdate} {
			if _, err := tok.Signer(label); err != nil {
				t.Errorf("Signer(%q): got error %v, want nil", label, err)
			}
		}
	})
}
