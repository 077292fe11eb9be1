package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server/hsm"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// fleetd init --create-token, given only a config file whose key URIs
// spread the keys over two new tokens with a PIN source each, makes both
// tokens and every key at its URI, sensitive and non-extractable; the
// usual labels stay empty.
func TestInitCreatesKeysAtURIs(t *testing.T) {
	module, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("uri-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYFLEET_HSM_PIN", "")
	t.Setenv("KEYFLEET_HSM_SO_PIN", "uri-so-pin")
	ca, other := fmt.Sprintf("ca-%d", os.Getpid()), fmt.Sprintf("other-%d", os.Getpid())
	q := "?module-path=" + module + "&pin-source=file:" + pinFile
	file := writeFile(t, "fleetd.yaml", "data: "+filepath.Join(dir, "data")+"\nkey-uri:\n"+
		"  ca: pkcs11:token="+ca+";object=root"+q+"\n"+
		"  birth-ca: pkcs11:token="+ca+";object=factory"+q+"\n"+
		"  update: pkcs11:token="+other+";object=upd"+q+"\n"+
		"  firmware: pkcs11:token="+other+";object=fw"+q+"\n"+
		"  escrow-kek: pkcs11:token="+other+";object=kek"+q+"\n")
	cmd := root()
	cmd.SetArgs([]string{"init", "--create-token", "--config", file, "--log-level", "warn"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct{ token, object string }{{ca, "root"}, {ca, "factory"}, {other, "upd"}, {other, "fw"}, {other, "kek"}} {
		sensitive, extractable, err := hsm.KeyAttributes(module, k.token, "uri-pin", k.object)
		if err != nil || !sensitive || extractable {
			t.Errorf("%s/%s: sensitive %v, extractable %v, %v", k.token, k.object, sensitive, extractable, err)
		}
	}
	for _, tok := range []string{ca, other} {
		if _, _, err := hsm.KeyAttributes(module, tok, "uri-pin", "keyfleet-ca"); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("%s: a key under the usual CA label? %v", tok, err)
		}
	}
}

// The configuration example in docs/operations.md passes config check,
// once its PIN files and module exist here.
func TestOperationsExampleChecks(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(# /etc/keyfleet/fleetd.yaml\n.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/operations.md has no fleetd.yaml example")
	}
	module, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	creds := t.TempDir()
	for _, f := range []string{"hsm-pin", "ca-pin"} {
		if err := os.WriteFile(filepath.Join(creds, f), []byte("1234\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	text := strings.NewReplacer("/run/credentials/fleetd.service", creds, "/usr/lib/softhsm/libsofthsm2.so", module).Replace(string(m[1]))
	if err := checkFile(writeFile(t, "fleetd.yaml", text)); err != nil {
		t.Errorf("config check refuses the documented example: %v\n%s", err, text)
	}
}
