package hsm_test

// The tests are an external package: fleettest imports server, which imports
// hsm. They do not run in parallel: PKCS#11 module initialisation is
// process-global (see the package Caveats).

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// keyStore is what Token and SoftKeys both offer.
type keyStore interface {
	GenerateP256(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
	URI(label string) string
	Ops() uint64
	Close() error
}

var (
	_ keyStore = (*hsm.Token)(nil)
	_ keyStore = (*hsm.SoftKeys)(nil)
)

func openToken(t *testing.T) (*hsm.Token, hsm.Config) {
	t.Helper()
	cfg := fleettest.NewToken(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("Open(%s): got error %v, want nil", cfg.TokenLabel, err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: got error %v, want nil", err)
		}
	})
	return tok, cfg
}

func openSoft(t *testing.T) (*hsm.SoftKeys, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := hsm.OpenSoftKeys(dir)
	if err != nil {
		t.Fatalf("OpenSoftKeys: got error %v, want nil", err)
	}
	return s, dir
}

// backends returns each key store, opened fresh for the calling test.
func backends() []struct {
	name string
	open func(t *testing.T) keyStore
} {
	return []struct {
		name string
		open func(t *testing.T) keyStore
	}{
		{"pkcs11", func(t *testing.T) keyStore { tok, _ := openToken(t); return tok }},
		{"soft", func(t *testing.T) keyStore { s, _ := openSoft(t); return s }},
	}
}

// checkSigns makes a signature with s over a SHA-256 digest and verifies it
// with pub.
func checkSigns(t *testing.T, s crypto.Signer, pub *ecdsa.PublicKey, msg string) {
	t.Helper()
	digest := sha256.Sum256([]byte(msg))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: got error %v, want nil", err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatalf("VerifyASN1 of the signature over %q: got false, want true", msg)
	}
	other := sha256.Sum256([]byte(msg + "!"))
	if ecdsa.VerifyASN1(pub, other[:], sig) {
		t.Fatalf("VerifyASN1 of the signature over another message: got true, want false")
	}
}

func p256Public(t *testing.T, s crypto.Signer) *ecdsa.PublicKey {
	t.Helper()
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("Public(): got %T, want *ecdsa.PublicKey", s.Public())
	}
	if pub.Curve != elliptic.P256() {
		t.Fatalf("curve: got %s, want P-256", pub.Curve.Params().Name)
	}
	return pub
}

func TestGenerateAndSign(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			gen, err := ks.GenerateP256("ca")
			if err != nil {
				t.Fatalf("GenerateP256: got error %v, want nil", err)
			}
			pub := p256Public(t, gen)
			checkSigns(t, gen, pub, "generated")

			// A second key must be a different key.
			gen2, err := ks.GenerateP256("update")
			if err != nil {
				t.Fatalf("GenerateP256(update): got error %v, want nil", err)
			}
			if p256Public(t, gen2).Equal(pub) {
				t.Fatal("second key: got the same public key as the first, want a new key")
			}

			for _, label := range []string{"ca", "update"} {
				t.Run("Signer "+label, func(t *testing.T) {
					s, err := ks.Signer(label)
					if err != nil {
						t.Fatalf("Signer(%q): got error %v, want nil", label, err)
					}
					want := pub
					if label == "update" {
						want = p256Public(t, gen2)
					}
					if got := p256Public(t, s); !got.Equal(want) {
						t.Fatalf("Signer(%q).Public(): got %v, want the generated key's %v", label, got, want)
					}
					checkSigns(t, s, want, "looked up "+label)
				})
			}
		})
	}
}

func TestGenerateTwiceExists(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			first, err := ks.GenerateP256("ca")
			if err != nil {
				t.Fatalf("GenerateP256: got error %v, want nil", err)
			}
			s, err := ks.GenerateP256("ca")
			if !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("second GenerateP256: got error %v, want %v", err, hsm.ErrKeyExists)
			}
			if s != nil {
				t.Errorf("second GenerateP256: got signer %v, want nil", s)
			}
			// The first key is untouched: still the one found, still signing.
			got, err := ks.Signer("ca")
			if err != nil {
				t.Fatalf("Signer after refused overwrite: got error %v, want nil", err)
			}
			if pub := p256Public(t, got); !pub.Equal(first.Public()) {
				t.Fatal("Signer after refused overwrite: got another key, want the first one")
			}
			checkSigns(t, got, p256Public(t, first), "after refused overwrite")
		})
	}
}

func TestSignerUnknown(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if _, err := ks.GenerateP256("ca"); err != nil {
				t.Fatalf("GenerateP256: got error %v, want nil", err)
			}
			for _, label := range []string{"nope", "c", "ca2", "CA"} {
				s, err := ks.Signer(label)
				if !errors.Is(err, hsm.ErrKeyNotFound) {
					t.Errorf("Signer(%q): got error %v, want %v", label, err, hsm.ErrKeyNotFound)
				}
				if s != nil {
					t.Errorf("Signer(%q): got signer, want nil", label)
				}
			}
		})
	}
}

func TestOpsCountsSignatures(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if got := ks.Ops(); got != 0 {
				t.Fatalf("Ops of a fresh store: got %d, want 0", got)
			}
			gen, err := ks.GenerateP256("ca")
			if err != nil {
				t.Fatalf("GenerateP256: got error %v, want nil", err)
			}
			if got := ks.Ops(); got != 0 {
				t.Fatalf("Ops after generating: got %d, want 0 (generation is not a signature)", got)
			}
			looked, err := ks.Signer("ca")
			if err != nil {
				t.Fatalf("Signer: got error %v, want nil", err)
			}
			_ = looked.Public()
			if got := ks.Ops(); got != 0 {
				t.Fatalf("Ops after lookup and Public: got %d, want 0", got)
			}
			digest := sha256.Sum256([]byte("x"))
			want := uint64(0)
			for i, s := range []crypto.Signer{gen, looked, gen, looked, looked} {
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					t.Fatalf("Sign %d: got error %v, want nil", i, err)
				}
				want++
				if got := ks.Ops(); got != want {
					t.Fatalf("Ops after %d signatures: got %d, want %d", want, got, want)
				}
			}
		})
	}
}

func TestTokenKeysSensitive(t *testing.T) {
	tok, cfg := openToken(t)
	labels := []string{"ca", "update"}
	for _, l := range labels {
		if _, err := tok.GenerateP256(l); err != nil {
			t.Fatalf("GenerateP256(%q): got error %v, want nil", l, err)
		}
	}
	for _, l := range labels {
		t.Run(l, func(t *testing.T) {
			sensitive, extractable, err := hsm.KeyAttributes(cfg.Module, cfg.TokenLabel, cfg.PIN, l)
			if err != nil {
				t.Fatalf("KeyAttributes: got error %v, want nil", err)
			}
			if !sensitive {
				t.Errorf("CKA_SENSITIVE of %s: got false, want true", tok.URI(l))
			}
			if extractable {
				t.Errorf("CKA_EXTRACTABLE of %s: got true, want false", tok.URI(l))
			}
		})
	}
	for _, tc := range []struct {
		name          string
		token, object string
		pin           hsm.PIN
		wantErr       error // nil: any error
	}{
		{"unknown object", cfg.TokenLabel, "nope", cfg.PIN, hsm.ErrKeyNotFound},
		{"unknown token", cfg.TokenLabel + "-nope", "ca", cfg.PIN, nil},
		{"wrong PIN", cfg.TokenLabel, "ca", "wrong-pin", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "wrong PIN" {
				// The token is logged in through Open's session; a wrong
				// PIN can only be detected on a token nobody is logged in to.
				c := fleettest.NewToken(t)
				tc.token = c.TokenLabel
			}
			_, _, err := hsm.KeyAttributes(cfg.Module, tc.token, tc.pin, tc.object)
			if err == nil {
				t.Fatalf("KeyAttributes: got nil error, want one")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("KeyAttributes: got error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestKeyAttributesNoOpenContext reads the attributes with no crypto11
// context open, so KeyAttributes initialises and finalises the module itself:
// they are a property of the stored key, not of the session that made it.
func TestKeyAttributesNoOpenContext(t *testing.T) {
	cfg := fleettest.NewToken(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("Open: got error %v, want nil", err)
	}
	if _, err := tok.GenerateP256("k"); err != nil {
		t.Fatalf("GenerateP256: got error %v, want nil", err)
	}
	if err := tok.Close(); err != nil {
		t.Fatalf("Close: got error %v, want nil", err)
	}
	sensitive, extractable, err := hsm.KeyAttributes(cfg.Module, cfg.TokenLabel, cfg.PIN, "k")
	if err != nil {
		t.Fatalf("KeyAttributes: got error %v, want nil", err)
	}
	if !sensitive || extractable {
		t.Errorf("attributes: got sensitive %v extractable %v, want true false", sensitive, extractable)
	}
	// The module is usable again afterwards.
	tok, err = hsm.Open(cfg)
	if err != nil {
		t.Fatalf("Open after KeyAttributes: got error %v, want nil", err)
	}
	defer tok.Close()
	s, err := tok.Signer("k")
	if err != nil {
		t.Fatalf("Signer after KeyAttributes: got error %v, want nil", err)
	}
	checkSigns(t, s, p256Public(t, s), "after KeyAttributes")
}

func TestOpenErrors(t *testing.T) {
	good := fleettest.NewToken(t)
	for _, tc := range []struct {
		name string
		cfg  hsm.Config
	}{
		{"no module", hsm.Config{TokenLabel: good.TokenLabel, PIN: good.PIN}},
		{"no token", hsm.Config{Module: good.Module, PIN: good.PIN}},
		{"no PIN", hsm.Config{Module: good.Module, TokenLabel: good.TokenLabel}},
		{"unknown token", hsm.Config{Module: good.Module, TokenLabel: good.TokenLabel + "-nope", PIN: good.PIN}},
		{"wrong PIN", hsm.Config{Module: good.Module, TokenLabel: good.TokenLabel, PIN: "not-the-pin-1234"}},
		{"missing module file", hsm.Config{Module: filepath.Join(t.TempDir(), "nope.so"), TokenLabel: good.TokenLabel, PIN: good.PIN}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := hsm.Open(tc.cfg)
			if err == nil {
				tok.Close()
				t.Fatalf("Open: got nil error, want one")
			}
			if tc.cfg.PIN != "" && strings.Contains(err.Error(), string(tc.cfg.PIN)) {
				t.Errorf("Open error: got %q, which contains the PIN, want it redacted", err)
			}
		})
	}
}

func TestInitToken(t *testing.T) {
	cfg := fleettest.NewToken(t)
	t.Run("existing label", func(t *testing.T) {
		err := hsm.InitToken(cfg.Module, cfg.TokenLabel, "other-so", "other-user")
		if err == nil {
			t.Fatalf("InitToken(%q) again: got nil error, want one", cfg.TokenLabel)
		}
		// The existing token keeps its PIN and keys.
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatalf("Open with the original PIN after refused InitToken: got error %v, want nil", err)
		}
		defer tok.Close()
		if _, err := tok.GenerateP256("k"); err != nil {
			t.Fatalf("GenerateP256: got error %v, want nil", err)
		}
	})
	t.Run("existing label while open", func(t *testing.T) {
		// A crypto11 context holds the module: InitToken must not
		// finalise it under the context's feet.
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatalf("Open: got error %v, want nil", err)
		}
		defer tok.Close()
		if err := hsm.InitToken(cfg.Module, cfg.TokenLabel, "other-so", "other-user"); err == nil {
			t.Fatalf("InitToken(%q) while open: got nil error, want one", cfg.TokenLabel)
		}
		s, err := tok.Signer("k")
		if err != nil {
			t.Fatalf("Signer after InitToken: got error %v, want nil", err)
		}
		checkSigns(t, s, p256Public(t, s), "token still usable")
	})
	t.Run("fresh label usable", func(t *testing.T) {
		label := cfg.TokenLabel + "-fresh"
		if err := hsm.InitToken(cfg.Module, label, "so-pin-1", "user-pin-1"); err != nil {
			t.Fatalf("InitToken(%q): got error %v, want nil", label, err)
		}
		tok, err := hsm.Open(hsm.Config{Module: cfg.Module, TokenLabel: label, PIN: "user-pin-1"})
		if err != nil {
			t.Fatalf("Open with the new user PIN: got error %v, want nil", err)
		}
		defer tok.Close()
		if _, err := tok.GenerateP256("k"); err != nil {
			t.Fatalf("GenerateP256 on the new token: got error %v, want nil", err)
		}
	})
	t.Run("bad module", func(t *testing.T) {
		if err := hsm.InitToken(filepath.Join(t.TempDir(), "nope.so"), "x", "so", "user"); err == nil {
			t.Fatal("InitToken with a missing module: got nil error, want one")
		}
	})
}

func TestPINRedacted(t *testing.T) {
	const secret = "s3cret-PIN-7731"
	pin := hsm.PIN(secret)
	cfg := hsm.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "fleet", PIN: pin, MaxSessions: 4}

	logged := func(h func(w *bytes.Buffer) slog.Handler, args ...any) string {
		var buf bytes.Buffer
		slog.New(h(&buf)).Info("config", args...)
		return buf.String()
	}
	text := func(w *bytes.Buffer) slog.Handler { return slog.NewTextHandler(w, nil) }
	json := func(w *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(w, nil) }

	for _, tc := range []struct {
		name string
		out  string
	}{
		{"PIN.String", pin.String()},
		{"PIN.LogValue", pin.LogValue().String()},
		{"%v PIN", fmt.Sprintf("%v", pin)},
		{"%s PIN", fmt.Sprintf("%s", pin)},
		{"%v cfg", fmt.Sprintf("%v", cfg)},
		{"%+v cfg", fmt.Sprintf("%+v", cfg)},
		{"%v &cfg", fmt.Sprintf("%v", &cfg)},
		{"%+v &cfg", fmt.Sprintf("%+v", &cfg)},
		{"error wrapping", fmt.Errorf("open %v: %w", cfg, errors.New("boom")).Error()},
		{"slog text PIN", logged(text, "pin", pin)},
		{"slog json PIN", logged(json, "pin", pin)},
		{"slog text cfg", logged(text, "hsm", cfg)},
		{"slog text Any cfg", logged(text, slog.Any("hsm", &cfg))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.out, secret) {
				t.Errorf("got %q, which contains the PIN, want it redacted", tc.out)
			}
			if tc.name == "PIN.String" || tc.name == "PIN.LogValue" {
				if want := "[redacted]"; tc.out != want {
					t.Errorf("got %q, want %q", tc.out, want)
				}
			}
		})
	}
	// Redaction must not change the PIN itself, which is what the token
	// gets.
	if got := string(pin); got != secret {
		t.Errorf("string(pin): got %q, want %q", got, secret)
	}
}

func TestKeyURIRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name          string
		token, object string
	}{
		{"plain", "fleet", "keyfleet-ca"},
		{"space", "my token", "ca key"},
		{"semicolon", "a;b", "c;d"},
		{"equals and slash", "a=b/c", "x/y=z"},
		{"percent", "100%", "%41"},
		{"question mark", "tok?en", "ob?ject"},
		{"unicode", "jeton-é", "clé"},
		{"colon and at", "t:1@x", "o:2@y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri := hsm.KeyURI(tc.token, tc.object)
			if !strings.HasPrefix(uri, "pkcs11:") {
				t.Fatalf("KeyURI: got %q, want a pkcs11: URI", uri)
			}
			if !strings.HasSuffix(uri, ";type=private") {
				t.Errorf("KeyURI: got %q, want it to end in ;type=private", uri)
			}
			tok, obj, err := hsm.ParseKeyURI(uri)
			if err != nil {
				t.Fatalf("ParseKeyURI(%q): got error %v, want nil", uri, err)
			}
			if tok != tc.token || obj != tc.object {
				t.Errorf("ParseKeyURI(%q): got (%q, %q), want (%q, %q)", uri, tok, obj, tc.token, tc.object)
			}
		})
	}
}

func TestParseKeyURI(t *testing.T) {
	for _, tc := range []struct {
		name          string
		uri           string
		token, object string
	}{
		{"minimal", "pkcs11:token=fleet;object=ca", "fleet", "ca"},
		{"any order", "pkcs11:object=ca;type=private;token=fleet", "fleet", "ca"},
		{"escaped", "pkcs11:token=my%20token;object=c%3Bd", "my token", "c;d"},
		{"query ignored", "pkcs11:token=fleet;object=ca?pin-source=file:/x", "fleet", "ca"},
		{"known extra attributes", "pkcs11:manufacturer=SoftHSM;model=v2;serial=42;token=fleet;id=%01%02;object=ca;type=private", "fleet", "ca"},
		{"trailing semicolon", "pkcs11:token=fleet;object=ca;", "fleet", "ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, obj, err := hsm.ParseKeyURI(tc.uri)
			if err != nil {
				t.Fatalf("ParseKeyURI(%q): got error %v, want nil", tc.uri, err)
			}
			if tok != tc.token || obj != tc.object {
				t.Errorf("ParseKeyURI(%q): got (%q, %q), want (%q, %q)", tc.uri, tok, obj, tc.token, tc.object)
			}
		})
	}
}

func TestParseKeyURIRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		uri  string
	}{
		{"empty", ""},
		{"not pkcs11", "file:///etc/keys/ca.pem"},
		{"wrong scheme case", "PKCS11:token=fleet;object=ca"},
		{"prefix only", "pkcs11:"},
		{"missing token", "pkcs11:object=ca;type=private"},
		{"missing object", "pkcs11:token=fleet;type=private"},
		{"empty token", "pkcs11:token=;object=ca"},
		{"empty object", "pkcs11:token=fleet;object="},
		{"unknown attribute", "pkcs11:token=fleet;object=ca;slot-id=3"},
		{"typo attribute", "pkcs11:token=fleet;objet=ca"},
		{"attribute without value", "pkcs11:token=fleet;object=ca;type"},
		{"bad escape", "pkcs11:token=fl%ZZeet;object=ca"},
		{"truncated escape", "pkcs11:token=fleet;object=ca%4"},
		{"object only in query", "pkcs11:token=fleet?object=ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, obj, err := hsm.ParseKeyURI(tc.uri)
			if err == nil {
				t.Errorf("ParseKeyURI(%q): got (%q, %q, nil), want an error", tc.uri, tok, obj)
			}
		})
	}
}

func TestSoftKeysPersist(t *testing.T) {
	s, dir := openSoft(t)
	gen, err := s.GenerateP256("ca")
	if err != nil {
		t.Fatalf("GenerateP256: got error %v, want nil", err)
	}
	pub := p256Public(t, gen)

	t.Run("file private", func(t *testing.T) {
		matches, _ := filepath.Glob(filepath.Join(dir, "*"))
		if len(matches) != 1 {
			t.Fatalf("files in key dir: got %q, want one", matches)
		}
		fi, err := os.Stat(matches[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got&0o077 != 0 {
			t.Errorf("key file mode: got %v, want no group or other access", got)
		}
		di, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := di.Mode().Perm(); got&0o077 != 0 {
			t.Errorf("key dir mode: got %v, want no group or other access", got)
		}
		if uri := s.URI("ca"); uri != "file://"+matches[0] {
			t.Errorf("URI: got %q, want %q", uri, "file://"+matches[0])
		}
	})

	t.Run("reload", func(t *testing.T) {
		s2, err := hsm.OpenSoftKeys(dir)
		if err != nil {
			t.Fatalf("re-open: got error %v, want nil", err)
		}
		k, err := s2.Signer("ca")
		if err != nil {
			t.Fatalf("Signer after re-open: got error %v, want nil", err)
		}
		if !p256Public(t, k).Equal(pub) {
			t.Fatal("Signer after re-open: got another key, want the generated one")
		}
		checkSigns(t, k, pub, "reloaded")
		if got := s2.Ops(); got != 1 {
			t.Errorf("Ops of the re-opened store: got %d, want 1", got)
		}
		if _, err := s2.GenerateP256("ca"); !errors.Is(err, hsm.ErrKeyExists) {
			t.Errorf("GenerateP256 over an existing file: got error %v, want %v", err, hsm.ErrKeyExists)
		}
		k2, err := s2.Signer("ca")
		if err != nil || !p256Public(t, k2).Equal(pub) {
			t.Errorf("Signer after refused overwrite: got error %v or another key, want the original key", err)
		}
	})

	t.Run("corrupt file", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			data []byte
		}{
			{"empty", nil},
			{"not PEM", []byte("hello")},
			{"bad DER", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				label := "corrupt-" + strings.ReplaceAll(tc.name, " ", "-")
				if err := os.WriteFile(filepath.Join(dir, label+".key.pem"), tc.data, 0o600); err != nil {
					t.Fatal(err)
				}
				k, err := s.Signer(label)
				if err == nil {
					t.Fatalf("Signer(%q): got signer %v, want an error", label, k)
				}
				if errors.Is(err, hsm.ErrKeyNotFound) {
					t.Errorf("Signer(%q): got %v, want an error other than ErrKeyNotFound", label, err)
				}
			})
		}
	})
}
