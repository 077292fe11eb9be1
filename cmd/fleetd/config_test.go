package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyfleet/keyfleet/internal/flagfile"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/softhsm"
)

// writeFile writes a config file in a fresh directory.
func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadRun parses args as `fleetd run` would and applies the environment
// and the file, without starting anything.
func loadRun(t *testing.T, args []string) (*cobra.Command, error) {
	t.Helper()
	tree, f := build()
	run, _, err := tree.Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := run.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	_, err = f.load(run)
	return run, err
}

// Each key takes its value from the flag, else the environment, else the
// file, else its default: one row per kind of flag.
func TestConfigPrecedence(t *testing.T) {
	for _, tc := range []struct {
		key, env                  string
		file, envVal, flag, deflt string // as the file, the environment and the command line write them
		fileWant, envWant, flWant string // String() of the value each sets
	}{
		{"mqtt-listen", "KEYFLEET_MQTT_LISTEN", "0.0.0.0:1", "0.0.0.0:2", "0.0.0.0:3", "127.0.0.1:8883", "0.0.0.0:1", "0.0.0.0:2", "0.0.0.0:3"},
		{"grace", "KEYFLEET_GRACE", "7d", "36h", "1d1h", "0", "7d", "36h0m0s", "25h0m0s"},
		{"command-ttl", "KEYFLEET_COMMAND_TTL", "5m", "6m", "7m", "10m0s", "5m0s", "6m0s", "7m0s"},
		{"print-changes", "KEYFLEET_PRINT_CHANGES", "true", "false", "true", "false", "true", "false", "true"},
		{"log-level", "KEYFLEET_LOG_LEVEL", "warn", "error", "debug", "info", "warn", "error", "debug"},
		{"token", "KEYFLEET_TOKEN", "file-token", "env-token", "flag-token", "keyfleet", "file-token", "env-token", "flag-token"},
		{"ops-listen", "KEYFLEET_OPS_LISTEN", `"off"`, "", "127.0.0.1:1", "127.0.0.1:9464", "off", "off", "127.0.0.1:1"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			file := writeFile(t, "fleetd.yaml", tc.key+": "+tc.file+"\n")
			base := []string{"--insecure-soft-keys"}
			steps := []struct {
				name      string
				args      []string
				env, want string
			}{
				{"default", base, "", tc.deflt},
				{"file", append(base, "--config", file), "", tc.fileWant},
				{"env over file", append(base, "--config", file), tc.envVal, tc.envWant},
				{"flag over env", append(base, "--config", file, "--"+tc.key+"="+tc.flag), tc.envVal, tc.flWant},
			}
			for _, s := range steps {
				t.Setenv(tc.env, s.env) // "" is unset as far as fleetd is concerned
				run, err := loadRun(t, s.args)
				if err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				if got := run.Flags().Lookup(tc.key).Value.String(); got != s.want {
					t.Errorf("%s: %s = %q, want %q", s.name, tc.key, got, s.want)
				}
			}
		})
	}
}

// Lists: a sequence or a mapping in the file, whitespace-separated items
// in the environment; the first source that sets a list gives all of it.
func TestConfigLists(t *testing.T) {
	t.Setenv("KEYFLEET_KEY_URI", "")
	file := writeFile(t, "fleetd.yaml", "insecure-soft-keys: true\nkey-uri:\n  ca: pkcs11:token=a;object=x\n  update: pkcs11:token=a;object=y\n")
	run, err := loadRun(t, []string{"--config", file})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := run.Flags().GetStringArray("key-uri"); strings.Join(got, " ") != "ca=pkcs11:token=a;object=x update=pkcs11:token=a;object=y" {
		t.Errorf("key-uri from the file: %q", got)
	}
	t.Setenv("KEYFLEET_KEY_URI", "firmware=pkcs11:token=b;object=f\n  birth-ca=pkcs11:token=b;object=g")
	if run, err = loadRun(t, []string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	if got, _ := run.Flags().GetStringArray("key-uri"); len(got) != 2 || got[0] != "firmware=pkcs11:token=b;object=f" {
		t.Errorf("key-uri from the environment: %q", got)
	}
	seq := writeFile(t, "init.yaml", "insecure-soft-keys: true\nkey-uri: [\"ca=pkcs11:token=a;object=x\"]\n")
	if run, err = loadRun(t, []string{"--config", seq, "--key-uri", "update=pkcs11:token=c;object=u"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := run.Flags().GetStringArray("key-uri"); len(got) != 1 || got[0] != "update=pkcs11:token=c;object=u" {
		t.Errorf("key-uri from the flag: %q", got)
	}
}

// Bad settings, in the file, the environment or on the command line, are
// refused with where they are and what is wrong, and fleetd init and
// fleetd run start nothing: no data directory, no listener.
func TestConfigRefusedNothingStarted(t *testing.T) {
	module, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		env        map[string]string
		args       []string
		want       []string
	}{
		{"unknown key", "mqtt-listn: 0.0.0.0:8883\n", nil, nil, []string{"fleetd.yaml:1: mqtt-listn: unknown key; did you mean mqtt-listen?"}},
		{"two errors at once", "# comment\ngrace: 7x\nlog-lvl: debug\n", nil, nil,
			[]string{"fleetd.yaml:3: log-lvl: unknown key", "fleetd.yaml:2: grace"}},
		{"bad duration", "data: x\ncommand-ttl: soon\n", nil, nil, []string{`fleetd.yaml:2: command-ttl: duration "soon": want a duration like 90s, 12h or 7d`}},
		{"bad bool", "print-changes: maybe\n", nil, nil, []string{`fleetd.yaml:1: print-changes: "maybe" is not a bool`}},
		{"list for a single value", "mqtt-listen: [a, b]\n", nil, nil, []string{"fleetd.yaml:1: mqtt-listen: want a single value, not a list"}},
		{"key twice", "token: a\ntoken: b\n", nil, nil, []string{"fleetd.yaml:2: token: set twice (first at line 1)"}},
		{"not a mapping", "- token\n", nil, nil, []string{"fleetd.yaml:1: want a mapping of flag names to values"}},
		{"yaml syntax", "token: [a\n", nil, nil, []string{"fleetd.yaml:1: did not find expected ',' or ']'"}},
		{"bad log level", "log-level: loud\n", nil, nil, []string{`fleetd.yaml:1: log-level: log level "loud"`}},
		{"unreadable pin file", "pin-file: /nonexistent/pin\n", nil, nil, []string{"fleetd.yaml:1: pin-file: pin file: open /nonexistent/pin"}},
		{"bad key uris in the file, each at its line", "key-uri:\n  ca: pkcs11:token=a;object=b;serial=9\n  update: pkcs11:object=u\n", nil, nil,
			[]string{`fleetd.yaml:2: key-uri: custody: key uri ca: unknown path attribute "serial"`,
				"fleetd.yaml:3: key-uri: custody: key uri update: missing token="}},
		{"bad key uri list in the file", "key-uri: [\"firmware=pkcs11:token=a\"]\n", nil, nil,
			[]string{"fleetd.yaml:1: key-uri: custody: key uri firmware: missing object="}},
		{"unknown module in a key uri", "", nil, []string{"--key-uri", "update=pkcs11:token=a;object=b?module-path=/nonexistent/p11.so"},
			[]string{"--key-uri: custody: key uri update: module-path /nonexistent/p11.so: no such PKCS#11 library"}},
		{"role named twice", "", nil, []string{"--key-uri", "ca=pkcs11:token=a;object=b", "--key-uri", "ca=pkcs11:token=a;object=c"},
			[]string{"key uri ca: role named twice"}},
		{"unreadable pin-source", "", map[string]string{"KEYFLEET_KEY_URI": "birth-ca=pkcs11:token=a;object=b?pin-source=file:/nonexistent/pin"}, nil,
			[]string{"KEYFLEET_KEY_URI: custody: key uri birth-ca: pin-source file:/nonexistent/pin: unreadable"}},
		{"bad env value", "", map[string]string{"KEYFLEET_GRACE": "forever"}, nil, []string{`KEYFLEET_GRACE: duration "forever"`}},
		{"store neither bolt nor postgres", "store: mysql://kf:secret@db.example/fleet\n", nil, nil,
			[]string{`fleetd.yaml:1: store: pgstore: store "…@db.example/fleet": want "bolt"`}},
		{"store unreachable", "", nil, []string{"--store", "postgres://kf:secret@127.0.0.1:1/fleet"},
			[]string{"--store: pgstore: connect to 127.0.0.1:1/fleet"}},
	} {
		for _, command := range []string{"init", "run"} {
			t.Run(tc.name+"/"+command, func(t *testing.T) {
				t.Setenv("KEYFLEET_HSM_PIN", "1234")
				t.Setenv("KEYFLEET_PKCS11_MODULE", module)
				for k, v := range tc.env {
					t.Setenv(k, v)
				}
				dir := t.TempDir()
				data := filepath.Join(dir, "data")
				addrs := []string{fleettest.FreeAddr(t), fleettest.FreeAddr(t), fleettest.FreeAddr(t)}
				args := []string{command, "--data", data}
				if command == "run" {
					args = append(args, "--mqtt-listen", addrs[0], "--admin-listen", addrs[1], "--ops-listen", addrs[2])
				}
				if tc.file != "" {
					p := filepath.Join(dir, "fleetd.yaml")
					if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
						t.Fatal(err)
					}
					args = append(args, "--config", p)
				}
				cmd := root()
				cmd.SetArgs(append(args, tc.args...))
				err := cmd.Execute()
				if err == nil {
					t.Fatal("accepted")
				}
				for _, w := range tc.want {
					if msg := strings.ReplaceAll(err.Error(), dir+"/", ""); !strings.Contains(msg, w) {
						t.Errorf("error %q\nwant it to say %q", msg, w)
					}
				}
				if strings.Contains(err.Error(), "1234") {
					t.Errorf("error %q shows the PIN", err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the database password", err)
				}
				if _, err := os.Stat(data); !os.IsNotExist(err) {
					t.Errorf("the data directory was made: %v", err)
				}
				for _, a := range addrs {
					l, err := net.Listen("tcp", a)
					if err != nil {
						t.Fatalf("%s is taken: %v", a, err)
					}
					l.Close()
				}
			})
		}
	}
}

// config check passes a good file and reports every error of a bad one,
// each as FILE:LINE: KEY: message, in line order.
func TestConfigCheck(t *testing.T) {
	good := writeFile(t, "good.yaml", "data: /var/lib/fleetd\nmqtt-listen: 0.0.0.0:8883\ngrace: 7d\nsan: [fleet.example.com]\n"+
		"key-uri:\n  ca: pkcs11:token=fleet;object=root\n")
	bad := writeFile(t, "bad.yaml", "grace: 7x\nmqtt-listn: x\nlog-level: loud\nprint-changes: 3\n")
	for _, tc := range []struct {
		name, file string
		wantErr    bool
		want       string
	}{
		{"good", good, false, good + ": ok\n"},
		{"bad", bad, true, bad + ":1: grace: duration \"7x\": want a duration like 90s, 12h or 7d\n" +
			bad + ":2: mqtt-listn: unknown key; did you mean mqtt-listen?\n" +
			bad + ":4: print-changes: \"3\" is not a bool\n"},
		{"missing", filepath.Join(t.TempDir(), "none.yaml"), true, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := root()
			cmd.SetOut(&out)
			cmd.SetErr(&errOut)
			cmd.SetArgs([]string{"config", "check", tc.file})
			err := cmd.Execute()
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if got := out.String() + errOut.String(); !strings.Contains(got, tc.want) {
				t.Errorf("output\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	// The log level is checked once the values parse.
	second := writeFile(t, "second.yaml", "log-level: loud\nlog-format: yaml\n")
	cmd := root()
	var errOut bytes.Buffer
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"config", "check", second})
	if err := cmd.Execute(); err == nil || !strings.Contains(errOut.String(), second+`:1: log-level: log level "loud"`) {
		t.Errorf("log level: %v\n%s", err, errOut.String())
	}
}

// config defaults prints every flag of init and run, each once, which
// config check accepts and which reads back as every default.
func TestConfigDefaultsRoundTrip(t *testing.T) {
	var out bytes.Buffer
	cmd := root()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"config", "defaults"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, "fleetd.yaml", out.String())
	if err := checkFile(file); err != nil {
		t.Fatalf("config check refuses config defaults: %v\n%s", err, out.String())
	}
	tree, _ := build()
	for _, k := range knownKeys(tree) {
		if n := strings.Count(out.String(), "\n"+k+":"); n != 1 {
			t.Errorf("key %s written %d times", k, n)
		}
	}
	t.Setenv("KEYFLEET_HSM_PIN", "1234") // config needs one; no token is opened
	for _, k := range knownKeys(tree) {
		t.Setenv(flagfile.EnvName(envPrefix, k), "") // unset, as fleetd reads it
	}
	for _, command := range []string{"init", "run"} {
		tree, f := build()
		c, _, _ := tree.Find([]string{command})
		if err := c.ParseFlags([]string{"--config", file}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.load(c); err != nil {
			t.Fatalf("%s: %v", command, err)
		}
		c.Flags().VisitAll(func(fl *pflag.Flag) {
			if fl.Name == "config" {
				return
			}
			if fl.Value.String() != fl.DefValue {
				t.Errorf("%s: %s read back as %q, default %q", command, fl.Name, fl.Value.String(), fl.DefValue)
			}
			if fl.Name != "help" && !strings.HasPrefix(f.origins[fl.Name], file+":") {
				t.Errorf("%s: %s set from %q, not the file", command, fl.Name, f.origins[fl.Name])
			}
		})
	}
}

// fleetd run refuses to keep a CRL file for the broker when step-ca
// issues the device certificates: it cannot sign the list of step-ca's
// intermediate, without which Mosquitto would refuse every device.
func TestBrokerCRLFileRefusedWithStepCA(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	cmd := root()
	cmd.SetArgs([]string{"run", "--data", data, "--insecure-soft-keys", "--issuer", "stepca", "--broker-crl-file", filepath.Join(t.TempDir(), "crl.pem")})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "--broker-crl-file: needs fleetd's own CA as issuer") {
		t.Fatalf("err %v, want --broker-crl-file refused with --issuer stepca", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("the data directory was made: %v", err)
	}
}
