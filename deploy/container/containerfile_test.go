// Package container holds the tests of fleetd's container recipe: the
// Containerfile, SoftHSM2 configuration and the repository's .dockerignore
// are the product. It has no non-test code.
//
// # Caveats
//
// No image is built here: this machine runs no container daemon (docker's
// client is installed, its daemon is not) and has no network to a registry
// for the golang and debian base images. The tests check the recipe
// statically instead: the base images match go.mod, every COPY source
// exists in the context and is not ignored, every file copied from the
// build stage is one it builds, the ENTRYPOINT is such a file, the user is
// not root, the state lives in the volume, the PIN is a secret file. Then
// they run what the image would run on this host: fleetd built as the
// build stage builds it, started with the image's CMD (paths moved to a
// temporary directory, listeners to free loopback ports) against a real
// SoftHSM2 token configured by the image's softhsm2.conf, and the
// HEALTHCHECK command itself against its ops listener.
package container

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// instruction is one Containerfile instruction with its stage (0-based).
type instruction struct {
	stage int
	cmd   string // upper case: FROM, RUN, COPY, ...
	args  string // the rest, continuation lines joined
}

// recipe is a parsed Containerfile.
type recipe struct {
	ins    []instruction
	stages []string // stage names (FROM ... AS name), "" when unnamed
}

// parseRecipe reads a Containerfile: comments dropped, lines ending in a
// backslash joined with the next.
func parseRecipe(t *testing.T, file string) recipe {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r recipe
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			name := ""
			if f := strings.Fields(args); len(f) == 3 && strings.EqualFold(f[1], "AS") {
				name = f[2]
			}
			r.stages = append(r.stages, name)
		}
		r.ins = append(r.ins, instruction{stage: len(r.stages) - 1, cmd: cmd, args: strings.TrimSpace(args)})
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	return r
}

// all returns the arguments of every instruction cmd in stage (-1: any).
func (r recipe) all(stage int, cmd string) []string {
	var out []string
	for _, in := range r.ins {
		if in.cmd == cmd && (stage < 0 || in.stage == stage) {
			out = append(out, in.args)
		}
	}
	return out
}

// last returns the arguments of the last instruction cmd in stage.
func (r recipe) last(t *testing.T, stage int, cmd string) string {
	t.Helper()
	a := r.all(stage, cmd)
	if len(a) == 0 {
		t.Fatalf("stage %d has no %s", stage, cmd)
	}
	return a[len(a)-1]
}

// execForm parses an exec-form (JSON array) argument.
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var a []string
	if err := json.Unmarshal([]byte(s), &a); err != nil || len(a) == 0 {
		t.Fatalf("%s %s: want the exec form, a JSON array of strings (%v)", what, s, err)
	}
	return a
}

// moduleRoot is the directory of keyfleet's go.mod: the build context.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// ignored reports whether .dockerignore excludes rel (slash-separated)
// from the context: a pattern matching it or one of its parents.
func ignored(patterns []string, rel string) bool {
	for p := rel; p != "." && p != "/"; p = path.Dir(p) {
		for _, pat := range patterns {
			if ok, _ := path.Match(strings.TrimSuffix(pat, "/"), p); ok {
				return true
			}
		}
	}
	return false
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

// TestContainerfile checks the recipe statically, then runs its CMD and
// HEALTHCHECK on this host (see the package comment for why no image is
// built).
func TestContainerfile(t *testing.T) {
	root := moduleRoot(t)
	r := parseRecipe(t, "Containerfile")
	if len(r.stages) != 2 {
		t.Fatalf("want two stages (build, runtime), have %d: %q", len(r.stages), r.stages)
	}
	const build, final = 0, 1

	// Base images: the Go of go.mod on bookworm, then bookworm itself.
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	if arg := "GO_VERSION=" + string(goVersion[1]); !slices.Contains(r.all(-1, "ARG"), arg) {
		t.Errorf("ARG %s missing: the build stage's Go must be go.mod's (%v)", arg, r.all(-1, "ARG"))
	}
	froms := r.all(-1, "FROM")
	if froms[build] != "golang:${GO_VERSION}-bookworm AS "+r.stages[build] || r.stages[build] == "" {
		t.Errorf("build stage FROM %s, want golang:${GO_VERSION}-bookworm AS NAME", froms[build])
	}
	if !strings.HasPrefix(froms[final], "debian:bookworm") {
		t.Errorf("runtime stage FROM %s, want debian:bookworm (the glibc fleetd is built against)", froms[final])
	}

	// COPY sources from the context exist and are not ignored; those from
	// the build stage are what its go build writes.
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	built := map[string]bool{}
	goBuild := regexp.MustCompile(`go build .*-o (\S+) (.*)`)
	for _, run := range r.all(build, "RUN") {
		m := goBuild.FindStringSubmatch(run)
		if m == nil {
			continue
		}
		for _, pkg := range strings.Fields(m[2]) {
			if st, err := os.Stat(filepath.Join(root, pkg)); err != nil || !st.IsDir() {
				t.Errorf("the build stage builds %s, which is not a package directory", pkg)
			}
			out := m[1]
			if strings.HasSuffix(out, "/") {
				out += path.Base(pkg)
			}
			built[out] = true
		}
	}
	if len(built) == 0 {
		t.Fatal("the build stage runs no go build -o")
	}
	installed := map[string]bool{} // paths in the runtime image
	for _, c := range r.all(final, "COPY") {
		f := strings.Fields(c)
		from := ""
		if v, ok := strings.CutPrefix(f[0], "--from="); ok {
			from, f = v, f[1:]
		}
		srcs, dest := f[:len(f)-1], f[len(f)-1]
		for _, src := range srcs {
			if from != "" {
				if from != r.stages[build] || !built[src] {
					t.Errorf("COPY --from=%s %s: not a file the build stage builds (%v)", from, src, built)
				}
			} else if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("COPY %s: not in the build context: %v", src, err)
			} else if ignored(patterns, src) {
				t.Errorf("COPY %s: excluded from the context by .dockerignore", src)
			}
			if strings.HasSuffix(dest, "/") {
				installed[dest+path.Base(src)] = true
			} else {
				installed[dest] = true
			}
		}
	}
	for _, must := range []string{"go.mod", "go.sum", "cmd/fleetd"} {
		if ignored(patterns, must) {
			t.Errorf(".dockerignore excludes %s, which the build stage needs", must)
		}
	}
	entry := execForm(t, "ENTRYPOINT", r.last(t, final, "ENTRYPOINT"))
	if !installed[entry[0]] || !built["/out/"+path.Base(entry[0])] {
		t.Errorf("ENTRYPOINT %s is not a binary copied from the build stage (%v)", entry[0], installed)
	}

	// Not root; the user is made in the image.
	user := r.last(t, final, "USER")
	if user == "root" || user == "0" || strings.HasPrefix(user, "0:") {
		t.Errorf("USER %s: want an unprivileged user", user)
	}
	if !slices.ContainsFunc(r.all(final, "RUN"), func(s string) bool { return strings.Contains(s, "useradd") && strings.Contains(s, " "+user) }) {
		t.Errorf("no RUN makes user %s", user)
	}
	if !slices.ContainsFunc(r.all(final, "RUN"), func(s string) bool { return regexp.MustCompile(`apt-get install .*\bsofthsm2\b`).MatchString(s) }) {
		t.Error("the runtime stage does not install softhsm2")
	}

	// State in the volume: fleetd's data and SoftHSM2's tokens; the PIN a
	// secret file.
	cmd := execForm(t, "CMD", r.last(t, final, "CMD"))
	volumes := execForm(t, "VOLUME", r.last(t, final, "VOLUME"))
	inVolume := func(p string) bool {
		return slices.ContainsFunc(volumes, func(v string) bool { return strings.HasPrefix(p, strings.TrimSuffix(v, "/")+"/") })
	}
	data := flagValue(cmd, "--data")
	if !inVolume(data) {
		t.Errorf("--data=%q is not in a VOLUME %v", data, volumes)
	}
	conf, err := os.ReadFile("softhsm2.conf")
	if err != nil {
		t.Fatal(err)
	}
	tokendir := regexp.MustCompile(`(?m)^directories\.tokendir\s*=\s*(\S+)`).FindSubmatch(conf)
	if tokendir == nil || !inVolume(string(tokendir[1])) {
		t.Errorf("softhsm2.conf's tokendir is not in a VOLUME %v", volumes)
	}
	if !installed["/etc/keyfleet/softhsm2.conf"] || !slices.ContainsFunc(r.all(final, "ENV"), func(s string) bool {
		return strings.Contains(s, "SOFTHSM2_CONF=/etc/keyfleet/softhsm2.conf")
	}) {
		t.Error("softhsm2.conf is not installed as /etc/keyfleet/softhsm2.conf and named by SOFTHSM2_CONF")
	}
	pin := flagValue(cmd, "--pin-file")
	if !strings.HasPrefix(pin, "/run/secrets/") {
		t.Errorf("--pin-file=%q, want a secret file under /run/secrets", pin)
	}
	if slices.ContainsFunc(r.all(-1, "ENV"), func(s string) bool { return strings.Contains(s, "KEYFLEET_HSM_PIN") }) {
		t.Error("an ENV sets KEYFLEET_HSM_PIN: the PIN would be in the image")
	}

	// The health check asks the ops listener's /healthz.
	hc := r.last(t, final, "HEALTHCHECK")
	_, hcJSON, ok := strings.Cut(hc, "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %s has no CMD", hc)
	}
	probe := execForm(t, "HEALTHCHECK CMD", hcJSON)
	_, opsPort, err := net.SplitHostPort(flagValue(cmd, "--ops-listen"))
	if err != nil {
		t.Fatalf("CMD's --ops-listen: %v", err)
	}
	if !strings.Contains(strings.Join(probe, " "), "/"+opsPort+";") && !strings.Contains(strings.Join(probe, " "), "/"+opsPort+" ") ||
		!strings.Contains(strings.Join(probe, " "), "/healthz") {
		t.Errorf("HEALTHCHECK %q does not ask /healthz on the ops port %s", probe, opsPort)
	}

	t.Run("cmd and healthcheck on this host", func(t *testing.T) {
		runImage(t, root, entry, cmd, probe, string(tokendir[1]), opsPort)
	})
}

// runImage runs on this host what the image runs: fleetd built as the
// build stage builds it, initialised as docs/operations.md#container says,
// started with the image's CMD (its paths under a temporary directory and
// its listeners on free loopback ports), and the HEALTHCHECK command
// pointed at the ops listener: healthy while fleetd runs, unhealthy after.
func runImage(t *testing.T, root string, entry, cmd, probe []string, tokendir, opsPort string) {
	tmp := t.TempDir()
	name := path.Base(entry[0])
	bin := filepath.Join(tmp, name)
	b := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	b.Dir = root
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The image's file system, under tmp.
	moved := func(p string) string { return filepath.Join(tmp, "image", p) }
	if err := os.MkdirAll(moved(tokendir), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := moved("/etc/keyfleet/softhsm2.conf")
	src, err := os.ReadFile("softhsm2.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(string(src), tokendir, moved(tokendir))), 0o644); err != nil {
		t.Fatal(err)
	}
	pinFile := moved(flagValue(cmd, "--pin-file"))
	if err := os.MkdirAll(filepath.Dir(pinFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pinFile, []byte("container-test-pin\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	ops := fleettest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(ops)
	var args []string
	for _, a := range cmd {
		name, v, ok := strings.Cut(a, "=")
		switch {
		case ok && (name == "--data" || name == "--pin-file"):
			a = name + "=" + moved(v)
		case ok && name == "--ops-listen":
			a = name + "=" + ops
		case ok && strings.HasSuffix(name, "-listen"):
			a = name + "=127.0.0.1:0"
		}
		args = append(args, a)
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+conf)
	initCmd := exec.Command(bin, "init", "--data="+flagValue(args, "--data"), "--pin-file="+flagValue(args, "--pin-file"), "--create-token", "--log-level=warn")
	initCmd.Env = env
	if out, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("fleetd init: %v\n%s", err, out)
	}
	run := exec.Command(bin, append(args, "--log-level=warn")...)
	run.Env = env
	var log fleettest.SyncBuffer
	run.Stdout, run.Stderr = &log, &log
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed once fleetd has exited; runErr is then set
	var runErr error
	go func() {
		runErr = run.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = run.Process.Kill()
			<-exited
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ready := false; !ready; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ops+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
		}
		select {
		case <-exited:
			t.Fatalf("fleetd exited before ready: %v\n%s", runErr, log.String())
		case <-ctx.Done():
			t.Fatalf("fleetd not ready within 60 s\n%s", log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The probe, pointed at this fleetd's ops port.
	check := func() error {
		var p []string
		for _, a := range probe {
			p = append(p, strings.ReplaceAll(a, "/"+opsPort, "/"+port))
		}
		c := exec.Command(p[0], p[1:]...)
		c.WaitDelay = 5 * time.Second
		out, err := c.CombinedOutput()
		if err != nil && len(out) > 0 {
			t.Logf("healthcheck: %s", out)
		}
		return err
	}
	if err := check(); err != nil {
		t.Errorf("HEALTHCHECK fails while fleetd serves: %v", err)
	}
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if runErr != nil {
			t.Errorf("fleetd after SIGTERM: %v\n%s", runErr, log.String())
		}
	case <-time.After(10 * time.Second): // docker stop's default grace before SIGKILL
		t.Fatalf("fleetd did not stop within 10 s of SIGTERM (docker stop would kill it)\n%s", log.String())
	}
	if err := check(); err == nil {
		t.Error("HEALTHCHECK passes with fleetd stopped")
	}
}
