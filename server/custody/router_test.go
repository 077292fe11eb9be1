package custody_test

import (
	"errors"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Open with key URIs sends each label to its role's token and object,
// keys derived from a role's label ("keyfleet-ca-v2") after it, and
// labels of no role to the CA's token; it counts the operations of every
// token and names keys by their real URIs.
func TestRouterPlacesKeys(t *testing.T) {
	a, b := fleettest.NewToken(t), fleettest.NewToken(t)
	uri := func(tok hsm.Config, object string) string {
		return "pkcs11:token=" + tok.TokenLabel + ";object=" + object
	}
	cfg, err := custody.ParseKeyURIs([]string{"ca=" + uri(a, "root"), "update=" + uri(b, "upd"), "escrow-kek=" + uri(b, "kek")}, a)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := custody.Open(cfg, "", fleettest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	for _, label := range []string{trust.LabelCA, trust.LabelCA + "-v2", trust.LabelUpdate, trust.LabelFirmware, "other"} {
		if _, err := keys.GenerateP256(label); err != nil {
			t.Fatalf("%s: %v", label, err)
		}
	}
	if err := keys.GenerateKEK(escrow.KEKLabel); err != nil {
		t.Fatal(err)
	}
	key, wrapped, err := keys.NewDataKey(escrow.KEKLabel, 32)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := keys.UnwrapDataKey(escrow.KEKLabel, wrapped); err != nil || string(back) != string(key) {
		t.Fatalf("unwrap: %v", err)
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
	for _, tc := range []struct {
		tok    *hsm.Token
		object string
	}{{ta, "root"}, {ta, "root-v2"}, {tb, "upd"}, {ta, trust.LabelFirmware}, {ta, "other"}} {
		if _, err := tc.tok.Signer(tc.object); err != nil {
			t.Errorf("%s: %v", tc.tok.URI(tc.object), err)
		}
	}
	for _, tc := range []struct {
		tok    *hsm.Token
		object string
	}{{ta, trust.LabelCA}, {tb, trust.LabelCA}, {tb, "root"}, {ta, "upd"}, {ta, trust.LabelUpdate}} {
		if _, err := tc.tok.Signer(tc.object); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("%s: want no key, got %v", tc.tok.URI(tc.object), err)
		}
	}
	if ok, err := tb.HasKEK("kek"); err != nil || !ok {
		t.Errorf("KEK in token b: %v %v", ok, err)
	}
	if ok, err := ta.HasKEK(escrow.KEKLabel); err != nil || ok {
		t.Errorf("KEK under the usual label in token a: %v %v", ok, err)
	}
	if got, want := keys.URI(trust.LabelUpdate), tb.URI("upd"); got != want {
		t.Errorf("URI %s, want %s", got, want)
	}
	s, err := keys.Signer(trust.LabelUpdate)
	if err != nil {
		t.Fatal(err)
	}
	before := keys.Ops()
	if _, err := s.Sign(nil, make([]byte, 32), nil); err != nil {
		t.Fatal(err)
	}
	if keys.Ops() != before+1 {
		t.Errorf("ops %d, want %d", keys.Ops(), before+1)
	}
}
