package flagfile

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/keyfleet/keyfleet/internal/durationflag"
)

// testFlags is a flag set with one flag of each kind fleetd uses.
func testFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("listen", "127.0.0.1:1", "address")
	fs.Bool("verbose", false, "say more")
	fs.StringSlice("san", nil, "names")
	fs.StringArray("key-uri", nil, "ROLE=URI")
	var d time.Duration
	durationflag.Var(fs, &d, "grace", 0, "grace")
	return fs
}

var known = []string{"listen", "verbose", "san", "key-uri", "grace"}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"unknown key with a suggestion", "listen: a\nlisten2: b\n", []string{"f.yaml:2: listen2: unknown key; did you mean listen?"}},
		{"unknown key far from any", "colour: blue\n", []string{"f.yaml:1: colour: unknown key"}},
		{"twice", "\nlisten: a\nlisten: b\n", []string{"f.yaml:3: listen: set twice (first at line 2)"}},
		{"not a mapping", "[a, b]\n", []string{"f.yaml:1: want a mapping of flag names to values"}},
		{"syntax", "a: b\n  c: d\n", []string{"f.yaml:2: mapping values are not allowed in this context"}},
		{"every problem", "x: 1\ny: 2\n", []string{"f.yaml:1: x: unknown key", "f.yaml:2: y: unknown key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.text), known)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want %q", err, w)
				}
			}
		})
	}
}

func TestApplyValues(t *testing.T) {
	for _, tc := range []struct {
		name, text, key, want, wantErr string
	}{
		{"string", "listen: 0.0.0.0:2\n", "listen", "0.0.0.0:2", ""},
		{"bool", "verbose: true\n", "verbose", "true", ""},
		{"days", "grace: 7d\n", "grace", "7d", ""},
		{"sequence", "san: [a, b]\n", "san", "[a,b]", ""},
		{"empty sequence", "san: []\n", "san", "[]", ""},
		{"null list", "san:\n", "san", "[]", ""},
		{"mapping as KEY=VALUE", "key-uri:\n  ca: pkcs11:token=a\n  update: pkcs11:token=b\n", "key-uri", "[ca=pkcs11:token=a,update=pkcs11:token=b]", ""},
		{"bad bool", "verbose: perhaps\n", "verbose", "", `f.yaml:1: verbose: "perhaps" is not a bool`},
		{"bad duration", "grace: 7x\n", "grace", "", `f.yaml:1: grace: duration "7x"`},
		{"list for a string", "listen: [a]\n", "listen", "", "f.yaml:1: listen: want a single value, not a list"},
		{"mapping for a string", "listen: {a: b}\n", "listen", "", "want a single value, not a mapping"},
		{"null for a string", "listen:\n", "listen", "", "f.yaml:1: listen: no value"},
		{"nested list item", "san: [[a]]\n", "san", "", "want a plain value in the list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("f.yaml", []byte(tc.text), known)
			if err != nil {
				t.Fatal(err)
			}
			fs := testFlags()
			origins, err := Apply(fs, f, "T_", func(string) string { return "" })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fs.Lookup(tc.key).Value.String(); got != tc.want {
				t.Errorf("%s = %q, want %q", tc.key, got, tc.want)
			}
			if origins[tc.key] != "f.yaml:1" {
				t.Errorf("origin %q, want f.yaml:1", origins[tc.key])
			}
			if tc.key == "key-uri" {
				if got := origins.WrapItem("key-uri", "update", errors.New("bad")).Error(); got != "f.yaml:3: key-uri: bad" {
					t.Errorf("item origin: %q", got)
				}
				if got := origins.WrapItem("key-uri", "firmware", errors.New("bad")).Error(); got != "f.yaml:1: key-uri: bad" {
					t.Errorf("origin of an item not in the file: %q", got)
				}
			}
		})
	}
}

// The command line beats the environment, which beats the file; skipped
// flags take nothing from either.
func TestApplyPrecedence(t *testing.T) {
	f, err := Parse("f.yaml", []byte("listen: file\nsan: [file]\nverbose: true\nkey-uri: [ca=file]\n"), known)
	if err != nil {
		t.Fatal(err)
	}
	fs := testFlags()
	if err := fs.Parse([]string{"--listen", "flag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"T_LISTEN": "env", "T_SAN": "e1,e2", "T_KEY_URI": "ca=env1\n update=env2", "T_VERBOSE": "false"}
	origins, err := Apply(fs, f, "T_", func(k string) string { return env[k] }, "verbose")
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"listen": "flag", "san": "[e1,e2]", "key-uri": "[ca=env1,update=env2]", "verbose": "false", "grace": "0"} {
		if got := fs.Lookup(key).Value.String(); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	for key, want := range map[string]string{"listen": "--listen", "san": "T_SAN", "verbose": "", "grace": ""} {
		if origins[key] != want {
			t.Errorf("origin of %s = %q, want %q", key, origins[key], want)
		}
	}
	_, err = Apply(testFlags(), nil, "T_", func(k string) string { return map[string]string{"T_GRACE": "soon"}[k] })
	if err == nil || !strings.HasPrefix(err.Error(), `T_GRACE: duration "soon"`) {
		t.Errorf("bad environment value: %v", err)
	}
}

// Wrap puts the origin on every line of a joined error.
func TestOriginsWrap(t *testing.T) {
	o := Origins{"key-uri": "f.yaml:4"}
	err := o.Wrap("key-uri", errors.Join(errors.New("ca: bad"), errors.New("update: bad")))
	if want := "f.yaml:4: key-uri: ca: bad\nf.yaml:4: key-uri: update: bad"; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	base := errors.New("x")
	if o.Wrap("grace", base) != base || o.Wrap("key-uri", nil) != nil {
		t.Error("no origin or no error: want it unchanged")
	}
	if !errors.Is(o.Wrap("key-uri", base), base) {
		t.Error("wrapped error lost its cause")
	}
	if got := (Origins{"grace": "--grace"}).Wrap("grace", base).Error(); got != "--grace: x" {
		t.Errorf("flag origin: %q", got)
	}
}

// WriteDefaults writes every flag once, at its default, which reads back.
func TestWriteDefaultsRoundTrip(t *testing.T) {
	fs := testFlags()
	fs.Lookup("san").DefValue = "[a.example,b.example]"
	var out bytes.Buffer
	if err := WriteDefaults(&out, "header", []Section{{Title: "all", Flags: fs}, {Title: "again", Flags: fs}}); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("d.yaml", out.Bytes(), known)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	back := testFlags()
	if _, err := Apply(back, f, "T_", func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	for _, k := range known {
		if strings.Count(out.String(), "\n"+k+":") != 1 {
			t.Errorf("%s not written exactly once:\n%s", k, out.String())
		}
	}
	want := map[string]string{"listen": "127.0.0.1:1", "verbose": "false", "san": "[a.example,b.example]", "key-uri": "[]", "grace": "0"}
	for k, w := range want {
		if got := back.Lookup(k).Value.String(); got != w {
			t.Errorf("%s read back as %q, want %q", k, got, w)
		}
	}
	if !strings.HasPrefix(out.String(), "# header\n") {
		t.Errorf("no header:\n%s", out.String())
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("KEYFLEET_", "mqtt-listen"); got != "KEYFLEET_MQTT_LISTEN" {
		t.Errorf("got %s", got)
	}
}
