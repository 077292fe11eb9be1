package e2e

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// fleetd's keys spread over two tokens under labels of the operator's
// choosing, named only by PKCS#11 URIs with a PIN source: init makes each
// key at its URI, run finds them there, a device rotates, an anchor
// rotation puts the new CA key beside the old one, and reading the tokens
// back over PKCS#11 finds every key where its URI says, sensitive and
// non-extractable, and none under the usual labels.
func TestKeysInTwoTokensByURI(t *testing.T) {
	a, b := fleettest.NewToken(t), fleettest.NewToken(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(fleettest.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := "?module-path=" + a.Module + "&pin-source=file:" + pinFile
	at := func(tok hsm.Config, object string) string {
		return "pkcs11:token=" + tok.TokenLabel + ";object=" + object + q
	}
	// No default token PIN: every key is placed by a URI with its own PIN
	// source (the step-ca provisioner key, unused here, follows the CA).
	keys, err := custody.ParseKeyURIs([]string{
		"ca=" + at(a, "fleet-root"),
		"birth-ca=" + at(a, "factory-ca"),
		"update=" + at(b, "update-signer"),
		"firmware=" + at(b, "firmware-signer"),
		"escrow-kek=" + "pkcs11:token=" + b.TokenLabel + ";object=escrow-wrap;type=secret-key" + q,
	}, hsm.Config{Module: a.Module, TokenLabel: "keyfleet"})
	if err != nil {
		t.Fatal(err)
	}
	f := fleettest.InitFleet(t, func(c *server.Config) { c.HSM = keys })
	f.Restart(t)
	dev := f.AddDevice(t, "uri-dev")
	runAgents(t, []string{dev}, nil)
	ctx := context.Background()
	eventually(t, 10*time.Second, "the device connected", func() bool { return f.Server.Broker().Connected() >= 2 })
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"uri-dev"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the device at version 2", allAt(t, f.Admin, 1, 2))
	if _, err := f.Admin.RotateAnchors(ctx, []string{"ca"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Server.Close(); err != nil {
		t.Fatal(err)
	}

	// Read the tokens back as another PKCS#11 client would.
	ca, err := identity.LoadPEM(datadir.Paths{Dir: f.Config.DataDir}.CACert())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		tok    hsm.Config
		object string
	}{{a, "fleet-root"}, {a, "factory-ca"}, {a, "fleet-root-v2"}, {b, "update-signer"}, {b, "firmware-signer"}} {
		sensitive, extractable, err := hsm.KeyAttributes(k.tok.Module, k.tok.TokenLabel, fleettest.PIN, k.object)
		if err != nil {
			t.Errorf("%s/%s: %v", k.tok.TokenLabel, k.object, err)
		} else if !sensitive || extractable {
			t.Errorf("%s/%s: sensitive %v, extractable %v", k.tok.TokenLabel, k.object, sensitive, extractable)
		}
	}
	ta, err := hsm.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer ta.Close()
	tb, err := hsm.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	root, err := ta.Signer("fleet-root")
	if err != nil {
		t.Fatal(err)
	}
	if !root.Public().(*ecdsa.PublicKey).Equal(ca[0].PublicKey) {
		t.Error("the CA certificate's key is not the key at the ca URI")
	}
	if ok, err := tb.HasKEK("escrow-wrap"); err != nil || !ok {
		t.Errorf("escrow KEK at its URI: %v, %v", ok, err)
	}
	for _, tok := range []*hsm.Token{ta, tb} {
		for _, usual := range []string{"keyfleet-ca", "keyfleet-update", "keyfleet-firmware", "keyfleet-idevid-ca", "keyfleet-ca-v2"} {
			if _, err := tok.Signer(usual); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("%s: a key under the usual label: %v", tok.URI(usual), err)
			}
		}
	}
	if _, err := tb.Signer("fleet-root"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("the CA key in the update key's token: %v", err)
	}
}
