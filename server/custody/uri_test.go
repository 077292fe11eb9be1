package custody_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/hsm"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// uriFixture gives a real module path and PIN file for URI tests.
func uriFixture(t *testing.T) (module, pinFile string) {
	t.Helper()
	module, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	pinFile = filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("s3cret-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return module, pinFile
}

// Good URIs place the key where they say, taking module and PIN from the
// URI or, where it has none, from the default token.
func TestParseKeyURIGood(t *testing.T) {
	module, pinFile := uriFixture(t)
	def := hsm.Config{Module: module, TokenLabel: "keyfleet", PIN: "default-pin"}
	tests := []struct {
		name, role, uri string
		want            hsm.KeyPlace
	}{
		{"token and object only", "ca", "pkcs11:token=fleet;object=root-2026",
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "fleet", PIN: "default-pin"}, Object: "root-2026"}},
		{"pin-source as file: URI", "update", "pkcs11:token=a;object=upd;type=private?pin-source=file:" + pinFile,
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "a", PIN: "s3cret-pin"}, Object: "upd"}},
		{"pin-source as path, module-path", "birth-ca", "pkcs11:token=b;object=factory?module-path=" + module + "&pin-source=" + pinFile,
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "b", PIN: "s3cret-pin"}, Object: "factory"}},
		{"escaped labels", "firmware", "pkcs11:token=my%20token;object=fw%3Bkey",
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "my token", PIN: "default-pin"}, Object: "fw;key"}},
		{"plus is a plus", "ca", "pkcs11:token=a+b;object=c+d",
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "a+b", PIN: "default-pin"}, Object: "c+d"}},
		{"the URI fleetd prints", "update", hsm.KeyURI("fleet;1", "upd 2"),
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "fleet;1", PIN: "default-pin"}, Object: "upd 2"}},
		{"kek is a secret key", "escrow-kek", "pkcs11:token=b;object=kek;type=secret-key?pin-value=1234",
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "b", PIN: "1234"}, Object: "kek"}},
		{"step-ca provisioner", "stepca-provisioner", "pkcs11:token=b;object=prov",
			hsm.KeyPlace{Token: hsm.Config{Module: module, TokenLabel: "b", PIN: "default-pin"}, Object: "prov"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := custody.ParseKeyURI(tc.role, tc.uri, def)
			if err != nil {
				t.Fatal(err)
			}
			if got.Object != tc.want.Object || got.Token.Module != tc.want.Token.Module ||
				got.Token.TokenLabel != tc.want.Token.TokenLabel || got.Token.PIN != tc.want.Token.PIN {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Bad URIs are refused with the role and the problem named, and never
// with the PIN in the message.
func TestParseKeyURIsBad(t *testing.T) {
	module, pinFile := uriFixture(t)
	def := hsm.Config{Module: module, TokenLabel: "keyfleet", PIN: "default-pin"}
	tests := []struct {
		name    string
		entries []string
		def     hsm.Config
		want    string
	}{
		{"unknown path attribute", []string{"ca=pkcs11:token=a;object=b;id=%01"}, def, `key uri ca: unknown path attribute "id"`},
		{"unknown query attribute", []string{"ca=pkcs11:token=a;object=b?pin-sauce=x"}, def, `key uri ca: unknown query attribute "pin-sauce"`},
		{"missing token", []string{"update=pkcs11:object=b"}, def, "key uri update: missing token="},
		{"missing object", []string{"firmware=pkcs11:token=a"}, def, "key uri firmware: missing object="},
		{"unreadable pin-source", []string{"ca=pkcs11:token=a;object=b?pin-source=file:/nonexistent/pin"}, def,
			"key uri ca: pin-source file:/nonexistent/pin: unreadable"},
		{"empty pin-source", []string{"ca=pkcs11:token=a;object=b?pin-source=" + emptyFile(t)}, def, "empty"},
		{"unknown module", []string{"birth-ca=pkcs11:token=a;object=b?module-path=/nonexistent/libp11.so"}, def,
			"key uri birth-ca: module-path /nonexistent/libp11.so: no such PKCS#11 library"},
		{"role named twice", []string{"ca=pkcs11:token=a;object=b", "ca=pkcs11:token=a;object=c"}, def, "key uri ca: role named twice"},
		{"unknown role", []string{"root=pkcs11:token=a;object=b"}, def, `key uri root: unknown role (want one of ca, update`},
		{"no role", []string{"pkcs11:token=a;object=b"}, def, "want ROLE=URI"},
		{"not pkcs11", []string{"ca=file:/etc/ca.key"}, def, "key uri ca: not a pkcs11: URI"},
		{"malformed escape", []string{"ca=pkcs11:token=a%zz;object=b"}, def, "key uri ca: malformed"},
		{"attribute twice", []string{"ca=pkcs11:token=a;token=b;object=c"}, def, `key uri ca: attribute "token" given 2 times`},
		{"pin twice", []string{"ca=pkcs11:token=a;object=b?pin-value=hunter2&pin-source=" + pinFile}, def, "both pin-source and pin-value"},
		{"wrong type", []string{"escrow-kek=pkcs11:token=a;object=b;type=private?pin-value=hunter2"}, def,
			"key uri escrow-kek: type=private, but this key is type=secret-key"},
		{"no PIN anywhere", []string{"ca=pkcs11:token=a;object=b"}, hsm.Config{Module: module}, "key uri ca: no PIN"},
		{"no module anywhere", []string{"ca=pkcs11:token=a;object=b?pin-value=hunter2"}, hsm.Config{}, "key uri ca: no module-path"},
		{"two roles one key", []string{"ca=pkcs11:token=a;object=k", "update=pkcs11:token=a;object=k"}, def,
			"key uri update: names the same key as ca"},
		{"one token two PINs", []string{"ca=pkcs11:token=a;object=k?pin-value=hunter2", "update=pkcs11:token=a;object=u"}, def,
			`token "a" is given another PIN`},
		{"no home for the rest", []string{"update=pkcs11:token=a;object=u?pin-value=hunter2"}, hsm.Config{Module: module, TokenLabel: "keyfleet"},
			"no default token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := custody.ParseKeyURIs(tc.entries, tc.def)
			if err == nil {
				t.Fatalf("accepted %q", tc.entries)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
			for _, secret := range []string{"hunter2", "default-pin", "s3cret-pin"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows a PIN", err)
				}
			}
		})
	}
}

func emptyFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Roles without a URI keep their usual label in the default token, or in
// the CA's when there is no default PIN; the Config's own token follows.
func TestParseKeyURIsFillsRoles(t *testing.T) {
	module, pinFile := uriFixture(t)
	got, err := custody.ParseKeyURIs([]string{"ca=pkcs11:token=a;object=root?pin-source=" + pinFile,
		"update=pkcs11:token=b;object=upd?pin-source=" + pinFile}, hsm.Config{Module: module, TokenLabel: "keyfleet"})
	if err != nil {
		t.Fatal(err)
	}
	if got.TokenLabel != "a" || got.PIN != "s3cret-pin" {
		t.Errorf("own token %q, want the CA's a", got.TokenLabel)
	}
	for _, r := range custody.Roles() {
		p, ok := got.Keys[r.Name]
		if !ok {
			t.Fatalf("no place for %s", r.Name)
		}
		want := map[string]string{"ca": "a/root", "update": "b/upd"}[r.Name]
		if want == "" {
			want = "a/" + r.Label
		}
		if p.Token.TokenLabel+"/"+p.Object != want {
			t.Errorf("%s at %s/%s, want %s", r.Name, p.Token.TokenLabel, p.Object, want)
		}
	}
	if none, err := custody.ParseKeyURIs(nil, hsm.Config{TokenLabel: "x"}); err != nil || none.Keys != nil {
		t.Errorf("no URIs: %+v, %v; want the config unchanged", none, err)
	}
}
