//go:build cgo

package hwkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/swtpm"
)

var _ device.HardwareKeys = (*Store)(nil)

// startTPM runs swtpm with a token "agent" and returns a --key-store URI
// for it.
func startTPM(t *testing.T) string {
	t.Helper()
	tpm, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tpm.Stop)
	for _, kv := range tpm.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if err := tpm.InitToken("agent", "so-pin", "user-pin"); err != nil {
		t.Fatalf("init the TPM token: %v", err)
	}
	pin := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pin, []byte("user-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "pkcs11:token=agent;object=dev?module-path=" + tpm.Module + "&pin-source=file:" + pin
}

// TestStoreInTPM: keys generated in swtpm through tpm2-pkcs11 sign (the
// signature verifies with the public key), are listed under the store's
// prefix only, read back sensitive and not extractable, and are gone once
// destroyed.
func TestStoreInTPM(t *testing.T) {
	uri := startTPM(t)
	s, err := Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ref, k, err := s.Generate("identity/v2")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("hello"))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature made in the TPM does not verify")
	}
	again, err := s.Signer(ref)
	if err != nil || !again.Public().(*ecdsa.PublicKey).Equal(k.Public()) {
		t.Fatalf("Signer(%s): got %v, want the generated key", ref, err)
	}
	other := &Store{p: s.p, sess: s.sess, pin: s.pin, object: "someone-else"}
	if _, _, err := other.Generate("x"); err != nil {
		t.Fatal(err)
	}
	refs, err := s.Refs()
	if err != nil || !slices.Equal(refs, []string{ref}) {
		t.Fatalf("Refs: got %v, %v; want [%s] (not the other prefix's key)", refs, err, ref)
	}
	keys, err := s.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != "dev/identity/v2" || !keys[0].Sensitive || keys[0].Extractable || !keys[0].Local {
		t.Fatalf("Keys: got %+v, want dev/identity/v2 sensitive, not extractable, generated in the token", keys)
	}
	if err := s.Destroy(ref); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Signer(ref); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Signer after Destroy: got %v, want fs.ErrNotExist", err)
	}
	if err := s.Destroy(ref); err != nil {
		t.Fatalf("Destroy of a key already gone: got %v, want nil", err)
	}
}

// TestParseURIRefuses: each bad --key-store URI is refused with a message
// naming the problem, and never echoing a pin-value.
func TestParseURIRefuses(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "module.so")
	pin := filepath.Join(dir, "pin")
	empty := filepath.Join(dir, "empty")
	for _, f := range []struct{ path, body string }{{mod, "x"}, {pin, "1234\n"}, {empty, "\n"}} {
		if err := os.WriteFile(f.path, []byte(f.body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := "pkcs11:token=agent;object=dev?module-path=" + mod + "&pin-source=file:" + pin
	c, err := ParseURI(good)
	if err != nil || c != (Config{Module: mod, Token: "agent", Object: "dev", PIN: "1234"}) {
		t.Fatalf("ParseURI(good): got %+v, %v", c, err)
	}
	for _, tc := range []struct{ uri, want string }{
		{"file:/var/lib/keys", "want a pkcs11: URI"},
		{"pkcs11:object=dev?module-path=" + mod + "&pin-source=file:" + pin, "missing token="},
		{"pkcs11:token=agent?module-path=" + mod + "&pin-source=file:" + pin, "missing object="},
		{"pkcs11:token=agent;object=dev?pin-source=file:" + pin, "missing module-path="},
		{"pkcs11:token=agent;object=dev;serial=1?module-path=" + mod + "&pin-source=file:" + pin, `unknown path attribute "serial"`},
		{"pkcs11:token=agent;object=dev?module-path=/nonexistent.so&pin-source=file:" + pin, "no such PKCS#11 library"},
		{"pkcs11:token=agent;object=dev?module-path=" + mod, "no PIN"},
		{"pkcs11:token=agent;object=dev?module-path=" + mod + "&pin-source=file:" + empty, "empty"},
		{"pkcs11:token=agent;object=dev?module-path=" + mod + "&pin-source=file:" + dir + "/nope", "unreadable"},
		{"pkcs11:token=agent;object=dev?module-path=" + mod + "&pin-source=file:" + pin + "&pin-value=secret-pin", "both pin-source and pin-value"},
	} {
		_, err := ParseURI(tc.uri)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseURI(%s): got %v, want an error with %q", tc.uri, err, tc.want)
		} else if strings.Contains(err.Error(), "secret-pin") {
			t.Errorf("ParseURI(%s): error %q carries the PIN", tc.uri, err)
		}
	}
}
