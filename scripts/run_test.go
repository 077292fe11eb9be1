// Package scripts holds the tests of the shell scripts behind make run,
// make bench and make chaos; the scripts themselves are the product.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// proc is a process of the process group under test.
type proc struct {
	pid  int
	name string // the executable's base name
	env  []string
}

// group lists the live processes of process group pgid, with their
// environments (a process that exits while being read is left out).
func group(pgid int) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			continue // gone, or a zombie about to be reaped
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		out = append(out, proc{pid: pid, name: filepath.Base(argv0), env: strings.Split(string(environ), "\x00")})
	}
	return out
}

// make run as a user runs it: the HSM PIN reaches fleetd only (through its
// --pin-file), never the environment of the agents or fleetctl; the screen
// shows fleetd's readable state-change lines and no log lines; SIGINT, as
// Ctrl-C sends it to the whole group, stops everything quickly with exit
// status 0.
func TestRunScript(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin+"/", "./cmd/fleetd", "./cmd/fleetctl", "./cmd/fleet-agent")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("binaries built in %v", time.Since(t0))

	varDir := t.TempDir()
	cmd := exec.Command("bash", "scripts/run.sh")
	cmd.Dir = root
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYFLEET_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	adminAddr := fleettest.FreeAddr(t)
	cmd.Env = append(cmd.Env, "VAR="+varDir, "BIN="+bin, "DEVICES=2", "EVERY=1",
		"MQTT="+fleettest.FreeAddr(t), "ADMIN="+adminAddr, "OPS="+fleettest.FreeAddr(t))
	var out fleettest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	})

	// Watch the group until both agents run, a fleetctl has been seen
	// and a rotation has shown on the screen.
	seen := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, p := range group(pgid) {
			seen[p.name]++
			for _, kv := range p.env {
				if strings.HasPrefix(kv, "KEYFLEET_HSM_PIN=") || strings.HasPrefix(kv, "KEYFLEET_HSM_SO_PIN=") {
					t.Errorf("%s (pid %d) holds %s=... in its environment", p.name, p.pid, strings.SplitN(kv, "=", 2)[0])
				}
			}
		}
		agents := 0
		for _, p := range group(pgid) {
			if p.name == "fleet-agent" {
				agents++
			}
		}
		if agents == 2 && seen["fleetctl"] > 0 && seen["fleetd"] > 0 && strings.Contains(out.String(), "identity v2 active") {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("run.sh ended early: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: saw %v; screen:\n%s", seen, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	t.Logf("agents running, fleetctl seen and a rotation on the screen %v after the start", time.Since(t0))
	screen := out.String()
	for _, want := range []string{"fleetd serving: devices on", "/metrics\n", "== provisioned dev-02", "dev-01 identity v2 pending",
		"identity v2 issued", "== 2 agents running"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	if strings.Contains(screen, "level=") || strings.Contains(screen, "time=") {
		t.Errorf("log lines on the screen:\n%s", screen)
	}
	// fleetctl in a second shell finds this fleet from the credential
	// directory: fleetd recorded its admin address there.
	if b, err := os.ReadFile(filepath.Join(varDir, "fleetd", "admin", "address")); err != nil || strings.TrimSpace(string(b)) != adminAddr {
		t.Errorf("admin address file: %q, %v; want %s", b, err, adminAddr)
	}
	pinFile := filepath.Join(varDir, "hsm.pin")
	if fi, err := os.Stat(pinFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("PIN file: %v, %v; want mode 0600", fi, err)
	}

	// Ctrl-C.
	start := time.Now()
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		took := time.Since(start)
		t.Logf("stopped %v after SIGINT", took)
		if err != nil {
			t.Errorf("run.sh exit: %v, want status 0\n%s", err, out.String())
		}
		if took > 2*time.Second {
			t.Errorf("run.sh took %v to stop, want under 2 s", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("run.sh still running 10 s after SIGINT\n%s", out.String())
	}
	if left := group(pgid); len(left) > 0 {
		t.Errorf("still running after run.sh ended: %+v", left)
	}
	if !strings.Contains(out.String(), "== stopped") {
		t.Errorf("no stop message:\n%s", out.String())
	}
}
