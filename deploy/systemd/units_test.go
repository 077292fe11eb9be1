// Package systemd holds the tests of keyfleet's systemd units: the units,
// sysusers/tmpfiles snippets and example environment files in this
// directory are the product, installed by an operator (fleetd) or a board
// vendor (fleet-agent). It has no non-test code.
//
// The tests build fleetd and fleet-agent into a temporary directory and
// check a copy of each unit whose /usr/bin paths are rewritten to those
// builds (systemd-analyze verify requires ExecStart's binary to exist);
// the units themselves keep /usr/bin, where the install steps put them.
//
// # Caveats
//
// The tests need systemd-analyze (Debian's systemd package) and SoftHSM2,
// which `make deps` installs through scripts/deps.sh --with-systemd;
// without them they fail and say so. They need no running systemd: verify and security
// --offline read unit files only, and the start test runs fleetd from the
// unit's command line with systemd's specifiers expanded by hand.
package systemd

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
)

// unit is a parsed unit file: every value of every key, per section, in
// file order (a key given twice, like SystemCallFilter, keeps both).
type unit struct {
	name     string
	sections map[string]map[string][]string
}

// values returns every value of key in section.
func (u unit) values(section, key string) []string { return u.sections[section][key] }

// value returns the last value of key in section, as systemd applies it.
func (u unit) value(section, key string) (string, bool) {
	v := u.sections[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// without returns a copy of u lacking key in section: what a unit that
// lost that directive would parse to.
func (u unit) without(section, key string) unit {
	c := unit{name: u.name, sections: map[string]map[string][]string{}}
	for s, kv := range u.sections {
		c.sections[s] = map[string][]string{}
		for k, v := range kv {
			if s == section && k == key {
				continue
			}
			c.sections[s][k] = v
		}
	}
	return c
}

// parseUnit reads a unit file as systemd.syntax(7) describes it, minus
// line continuations, which keyfleet's units do not use.
func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{name: filepath.Base(path), sections: map[string]map[string][]string{}}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u.sections[section] = map[string][]string{}
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: line continuations are not supported by this test; write the directive on one line", path, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a directive: %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			u.sections[section][k] = append(u.sections[section][k], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// sandbox is what both units must set, with why: each is a directive whose
// loss widens what a compromised fleetd or agent could do.
var sandbox = []struct{ key, want, why string }{
	{"NoNewPrivileges", "yes", "no setuid escalation"},
	{"ProtectSystem", "strict", "the whole file system read-only but the state directory"},
	{"ProtectHome", "yes", "no access to users' homes"},
	{"PrivateTmp", "yes", "a /tmp of its own"},
	{"PrivateDevices", "yes", "no raw devices"},
	{"ProtectKernelTunables", "yes", "no /proc/sys writes"},
	{"ProtectKernelModules", "yes", "no module loading"},
	{"ProtectControlGroups", "yes", "cgroup tree read-only"},
	{"RestrictSUIDSGID", "yes", "no setuid files made"},
	{"RestrictNamespaces", "yes", "no new namespaces"},
	{"LockPersonality", "yes", "no execution-domain changes"},
	{"MemoryDenyWriteExecute", "yes", "no writable-executable memory"},
	{"CapabilityBoundingSet", "", "no capabilities at all"},
	{"RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6", "IP and local sockets only"},
	{"SystemCallArchitectures", "native", "no foreign-ABI system calls"},
	{"UMask", "0077", "files private to the service"},
	{"Restart", "on-failure", "back after a crash"},
}

// checkUnit returns what is wrong with unit u (binary is the ExecStart
// program it must run, dirFlag the flag naming its state under %S).
func checkUnit(u unit, binary, dirFlag string) []string {
	var errs []string
	for _, d := range sandbox {
		got, ok := u.value("Service", d.key)
		if !ok {
			errs = append(errs, fmt.Sprintf("%s lacks %s=%s (%s)", u.name, d.key, d.want, d.why))
		} else if got != d.want {
			errs = append(errs, fmt.Sprintf("%s has %s=%s, want %s (%s)", u.name, d.key, got, d.want, d.why))
		}
	}
	if f := u.values("Service", "SystemCallFilter"); !slices.Contains(f, "@system-service") {
		errs = append(errs, fmt.Sprintf("%s: SystemCallFilter does not allow-list @system-service (has %q)", u.name, f))
	}
	if user, ok := u.value("Service", "User"); !ok || user == "root" || user == "0" {
		errs = append(errs, fmt.Sprintf("%s runs as %q, want a system user of its own", u.name, user))
	}
	execStart, _ := u.value("Service", "ExecStart")
	args := strings.Fields(execStart)
	if len(args) == 0 || args[0] != "/usr/bin/"+binary {
		errs = append(errs, fmt.Sprintf("%s: ExecStart=%s does not run /usr/bin/%s", u.name, execStart, binary))
	}
	// The state the service keeps is under one of its StateDirectory
	// entries: the only place ProtectSystem=strict leaves writable.
	state, _ := u.value("Service", "StateDirectory")
	dir := flagValue(args, dirFlag)
	rel, under := strings.CutPrefix(dir, "%S/")
	if !under || !slices.Contains(strings.Fields(state), rel) {
		errs = append(errs, fmt.Sprintf("%s: %s=%q is not a StateDirectory (%q) under %%S", u.name, dirFlag, dir, state))
	}
	return errs
}

// flagValue is the value of --name=V in args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// checkCredential returns what is wrong with how fleetd.service passes the
// token PIN: through LoadCredential, named in --pin-file as %d/ID.
func checkCredential(u unit) []string {
	cred, ok := u.value("Service", "LoadCredential")
	id, src, _ := strings.Cut(cred, ":")
	if !ok || id == "" || !strings.HasPrefix(src, "/") {
		return []string{fmt.Sprintf("%s: the PIN does not come through LoadCredential=ID:/PATH (has %q)", u.name, cred)}
	}
	execStart, _ := u.value("Service", "ExecStart")
	if got := flagValue(strings.Fields(execStart), "--pin-file"); got != "%d/"+id {
		return []string{fmt.Sprintf("%s: --pin-file=%q, want %%d/%s (the credential)", u.name, got, id)}
	}
	for _, k := range []string{"Environment", "EnvironmentFile", "ExecStart"} {
		for _, v := range u.values("Service", k) {
			if strings.Contains(v, "KEYFLEET_HSM_PIN") {
				return []string{fmt.Sprintf("%s: %s carries KEYFLEET_HSM_PIN; the PIN goes through the credential only", u.name, k)}
			}
		}
	}
	return nil
}

// moduleRoot is the directory of keyfleet's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// build builds keyfleet's command name into dir and returns its path.
func build(t *testing.T, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = moduleRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, b)
	}
	return out
}

// rewritten writes a copy of unit file src into dir with /usr/bin/NAME
// replaced by the built binary, and returns its path.
func rewritten(t *testing.T, src, dir string, bins map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for name, path := range bins {
		s = strings.ReplaceAll(s, "/usr/bin/"+name+" ", path+" ")
	}
	out := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// envFile reads a systemd EnvironmentFile (KEY=VALUE lines, # comments).
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=VALUE: %q", path, line)
		}
		env[k] = v
	}
	return env
}

// expand does what systemd does to an ExecStart line before running it:
// the specifiers %S (state root) and %d (credentials directory), and an
// unquoted $VAR split into words.
func expand(line, stateRoot, credDir string, env map[string]string) []string {
	line = strings.NewReplacer("%S", stateRoot, "%d", credDir).Replace(line)
	var args []string
	for _, w := range strings.Fields(line) {
		if name, ok := strings.CutPrefix(w, "$"); ok {
			args = append(args, strings.Fields(env[strings.Trim(name, "{}")])...)
			continue
		}
		args = append(args, w)
	}
	return args
}

// TestUnits: both units pass systemd-analyze verify and security, carry
// the sandbox and run the right binary over their state directory; the
// flags in their command lines and example environment files are ones the
// binaries accept; and fleetd starts from its unit's command line with
// the PIN read from $CREDENTIALS_DIRECTORY.
func TestUnits(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not found: run `make deps` (scripts/deps.sh --with-systemd installs Debian's systemd package)")
	}
	bin := t.TempDir()
	bins := map[string]string{"fleetd": build(t, bin, "fleetd"), "fleet-agent": build(t, bin, "fleet-agent")}
	units := map[string]string{} // unit name -> rewritten copy
	copies := t.TempDir()
	for name := range bins {
		units[name] = rewritten(t, name+".service", copies, bins)
	}

	t.Run("verify", func(t *testing.T) {
		for name, path := range units {
			out, err := exec.Command("systemd-analyze", "verify", "--man=no", path).CombinedOutput()
			// verify exits 0 on unknown or unparsable directives and only
			// warns: any output is a failure.
			if err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s.service: %v\n%s", name, err, out)
			}
		}
	})

	t.Run("security", func(t *testing.T) {
		score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
		for name, path := range units {
			// --threshold=20: exposure 2.0 of 10 at most, well inside "OK".
			out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", path).CombinedOutput()
			m := score.FindSubmatch(out)
			if err != nil || m == nil {
				t.Errorf("systemd-analyze security %s.service: %v\n%s", name, err, out)
				continue
			}
			t.Logf("%s.service: exposure %s", name, m[1])
		}
	})

	fleetd := parseUnit(t, "fleetd.service")
	agent := parseUnit(t, "fleet-agent.service")
	t.Run("sandbox", func(t *testing.T) {
		for _, e := range checkUnit(fleetd, "fleetd", "--data") {
			t.Error(e)
		}
		for _, e := range checkCredential(fleetd) {
			t.Error(e)
		}
		for _, e := range checkUnit(agent, "fleet-agent", "--dir") {
			t.Error(e)
		}
	})

	// The checks above can fail: a unit that lost any one directive, or
	// whose PIN comes another way, is reported.
	t.Run("sandbox check catches losses", func(t *testing.T) {
		for _, d := range sandbox {
			if errs := checkUnit(fleetd.without("Service", d.key), "fleetd", "--data"); len(errs) == 0 {
				t.Errorf("fleetd.service without %s passes the check", d.key)
			}
		}
		for _, key := range []string{"SystemCallFilter", "User", "StateDirectory", "ExecStart"} {
			if errs := checkUnit(agent.without("Service", key), "fleet-agent", "--dir"); len(errs) == 0 {
				t.Errorf("fleet-agent.service without %s passes the check", key)
			}
		}
		if errs := checkCredential(fleetd.without("Service", "LoadCredential")); len(errs) == 0 {
			t.Error("fleetd.service without LoadCredential passes the check")
		}
	})

	t.Run("sysusers and tmpfiles", func(t *testing.T) {
		checkSnippets(t, []unit{fleetd, agent})
	})

	t.Run("documentation links", func(t *testing.T) {
		anchors := docAnchors(t, filepath.Join(moduleRoot(t), "docs", "operations.md"))
		for _, u := range []unit{fleetd, agent} {
			doc, _ := u.value("Unit", "Documentation")
			_, anchor, ok := strings.Cut(doc, "docs/operations.md#")
			if !ok || !anchors[anchor] {
				t.Errorf("%s: Documentation=%s is not a heading of docs/operations.md", u.name, doc)
			}
		}
	})

	t.Run("flags accepted", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			u       unit
			envFile string
		}{
			{"fleetd", fleetd, "fleetd.env"},
			{"fleet-agent", agent, "fleet-agent.env"},
		} {
			execStart, _ := tc.u.value("Service", "ExecStart")
			args := expand(execStart, "/var/lib", "/run/credentials/x", envFile(t, tc.envFile))
			// Flags are parsed before --help is acted on: an unknown flag
			// fails here without starting anything.
			out, err := exec.Command(bins[tc.name], append(args[1:], "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("%s %v --help (the unit's command line with %s's options): %v\n%s", tc.name, args[1:], tc.envFile, err, out)
			}
		}
	})

	t.Run("fleetd and an agent start from their units", func(t *testing.T) {
		startFromUnits(t, bins, fleetd, agent)
	})
}

// service is a process started from a unit's command line.
type service struct {
	cmd    *exec.Cmd
	log    *fleettest.SyncBuffer
	exited chan struct{} // closed when the process has exited; err is then set
	err    error
}

// start runs args with env, its output collected, killed at the end of
// the test if still running.
func start(t *testing.T, args, env []string) *service {
	t.Helper()
	s := &service{cmd: exec.Command(args[0], args[1:]...), log: &fleettest.SyncBuffer{}, exited: make(chan struct{})}
	s.cmd.Env = env
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	})
	return s
}

// waitFor polls cond every 100 ms until it holds, failing the test if the
// process exits or within elapses first.
func (s *service) waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.After(within)
	for !cond() {
		select {
		case <-s.exited:
			t.Fatalf("%s exited before %s: %v\n%s", s.cmd.Path, what, s.err, s.log.String())
		case <-deadline:
			t.Fatalf("%s: no %s within %v\n%s", s.cmd.Path, what, within, s.log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, as systemctl stop does, and wants a clean exit
// within the unit's TimeoutStopSec (systemd's default, 90 s, if unset).
func (s *service) stop(t *testing.T, u unit) {
	t.Helper()
	timeout := 90 * time.Second
	if ts, ok := u.value("Service", "TimeoutStopSec"); ok {
		var err error
		if timeout, err = time.ParseDuration(ts); err != nil {
			t.Fatalf("%s: TimeoutStopSec=%q: %v", u.name, ts, err)
		}
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.exited:
		if s.err != nil {
			t.Errorf("%s after SIGTERM: %v\n%s", u.name, s.err, s.log.String())
		}
	case <-time.After(timeout):
		t.Errorf("%s did not stop within %v of SIGTERM\n%s", u.name, timeout, s.log.String())
	}
}

// startFromUnits initialises a SoftHSM2 token and data directory as the
// install steps do, then runs fleetd with its unit's ExecStart, %d being a
// credentials directory holding the PIN as systemd's LoadCredential
// leaves it (mode 0400, $CREDENTIALS_DIRECTORY set), and waits for
// /readyz: ready means the token was opened with that PIN. It then
// provisions a device into the agent unit's keystore directory, runs the
// agent with its unit's ExecStart and the example fleet-agent.env, and
// has it rotate once: the keystore under the StateDirectory is where the
// agent keeps and replaces its keys. Both stop cleanly on SIGTERM.
func startFromUnits(t *testing.T, bins map[string]string, fleetdUnit, agentUnit unit) {
	dir := t.TempDir()
	stateRoot := filepath.Join(dir, "state") // %S
	credDir := filepath.Join(dir, "credentials")
	tokens := filepath.Join(stateRoot, "keyfleet", "tokens")
	// What StateDirectory= makes before ExecStart.
	for _, u := range []unit{fleetdUnit, agentUnit} {
		state, _ := u.value("Service", "StateDirectory")
		for _, d := range strings.Fields(state) {
			if err := os.MkdirAll(filepath.Join(stateRoot, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, _ := fleetdUnit.value("Service", "LoadCredential")
	id, _, _ := strings.Cut(cred, ":")
	if err := os.WriteFile(filepath.Join(credDir, id), []byte("unit-test-pin\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	ops := fleettest.FreeAddr(t)
	env := append(os.Environ(), "SOFTHSM2_CONF="+conf, "CREDENTIALS_DIRECTORY="+credDir,
		"FLEETD_OPTS=--mqtt-listen=127.0.0.1:0 --admin-listen=127.0.0.1:0 --ops-listen="+ops+" --log-level=warn")
	envMap := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		envMap[k] = v
	}
	line, _ := fleetdUnit.value("Service", "ExecStart")
	args := expand(line, stateRoot, credDir, envMap)
	args[0] = bins["fleetd"]
	data := flagValue(args, "--data")

	initCmd := exec.Command(bins["fleetd"], "init", "--data="+data, "--pin-file="+flagValue(args, "--pin-file"), "--create-token", "--log-level=warn")
	initCmd.Env = env
	if out, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("fleetd init: %v\n%s", err, out)
	}
	fleetd := start(t, args, env)
	fleetd.waitFor(t, "/readyz 200", 60*time.Second, func() bool {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// The operator provisions a device; its keystore is copied to where the
	// agent's unit keeps it.
	adminDir := filepath.Join(data, "admin")
	addr, err := os.ReadFile(filepath.Join(adminDir, "address"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := client.LoadCredential(adminDir)
	if err != nil {
		t.Fatal(err)
	}
	admin := client.New(strings.TrimSpace(string(addr)), tc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	line, _ = agentUnit.value("Service", "ExecStart")
	agentArgs := expand(line, stateRoot, credDir, envFile(t, "fleet-agent.env"))
	agentArgs[0] = bins["fleet-agent"]
	const device = "unit-dev-1"
	if _, err := provision.Device(ctx, admin, device, flagValue(agentArgs, "--dir"), ""); err != nil {
		t.Fatalf("provision: %v", err)
	}
	agent := start(t, agentArgs, os.Environ())
	event := func(kind string) func() bool {
		return func() bool { return strings.Contains(agent.log.String(), `"event":"`+kind+`"`) }
	}
	agent.waitFor(t, "connected event", 60*time.Second, event("connected"))
	if _, err := admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{device}}); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	agent.waitFor(t, "activated event", 60*time.Second, event("activated"))
	agent.stop(t, agentUnit)
	fleetd.stop(t, fleetdUnit)
}

// docAnchors returns the anchors GitHub gives the headings of a Markdown
// file: lower case, spaces as hyphens, other punctuation dropped.
func docAnchors(t *testing.T, file string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		title, ok := strings.CutPrefix(line, "#")
		if !ok {
			continue
		}
		title = strings.TrimSpace(strings.TrimLeft(title, "#"))
		var a strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				a.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				a.WriteRune(r)
			}
		}
		anchors[a.String()] = true
	}
	return anchors
}

// checkSnippets installs every unit's sysusers and tmpfiles snippet into
// an empty root, as the install steps do, and runs systemd-sysusers and
// systemd-tmpfiles --create on it: the users the units run as are made,
// and every StateDirectory of theirs exists with mode 0700, owned by the
// unit's user (ownership only when the test runs as root: tmpfiles cannot
// chown otherwise), so that init or a keystore copy can come first.
func checkSnippets(t *testing.T, units []unit) {
	root := t.TempDir()
	for _, d := range []string{"etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		base := strings.TrimSuffix(u.name, ".service")
		for src, dst := range map[string]string{base + ".sysusers": "usr/lib/sysusers.d", base + ".tmpfiles": "usr/lib/tmpfiles.d"} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, dst, base+".conf"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, err := exec.Command("systemd-sysusers", "--root="+root).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	out, err := exec.Command("systemd-tmpfiles", "--root="+root, "--create").CombinedOutput()
	asRoot := os.Geteuid() == 0
	if asRoot && err != nil || regexp.MustCompile(`(?i)failed to parse|unknown|invalid`).Match(out) {
		t.Fatalf("systemd-tmpfiles --create: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	uids := map[string]uint32{}
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 {
			var uid uint32
			fmt.Sscan(f[2], &uid)
			uids[f[0]] = uid
		}
	}
	for _, u := range units {
		user, _ := u.value("Service", "User")
		uid, ok := uids[user]
		if !ok {
			t.Errorf("%s: sysusers makes no user %s (made: %v)", u.name, user, uids)
			continue
		}
		state, _ := u.value("Service", "StateDirectory")
		for _, d := range strings.Fields(state) {
			st, err := os.Stat(filepath.Join(root, "var", "lib", d))
			if err != nil {
				t.Errorf("%s: tmpfiles does not make StateDirectory %s: %v", u.name, d, err)
				continue
			}
			if st.Mode().Perm() != 0o700 {
				t.Errorf("%s: /var/lib/%s has mode %v, want 0700", u.name, d, st.Mode().Perm())
			}
			if owner := st.Sys().(*syscall.Stat_t).Uid; asRoot && owner != uid {
				t.Errorf("%s: /var/lib/%s owned by uid %d, want %s (%d)", u.name, d, owner, user, uid)
			}
		}
	}
}
