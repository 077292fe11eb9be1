package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/store"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds fleetd, fleet-agent and fleetctl once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "keyfleet-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+string(os.PathSeparator), "../cmd/fleetd", "../cmd/fleet-agent", "../cmd/fleetctl")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// proc is a child process whose output goes to the test log on failure.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedWriter
	done chan error
}

func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), out: &lockedWriter{}, done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), p.out.String())
		}
	})
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// wait returns the process's exit error, or fails after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("process %s still running after %v", p.cmd.Path, timeout)
		return nil
	}
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// fleetdProc is fleetd run as a process of its own on one data directory
// and fixed addresses, so that a test can SIGKILL it and start it again on
// the same state and ports.
type fleetdProc struct {
	t                            *testing.T
	bin, data                    string
	env, args                    []string
	mqttAddr, adminAddr, opsAddr string
	proc                         *proc // the running fleetd
	admin                        *client.Client
}

// startFleetdProc initialises a data directory under dir with a token of
// its own and starts fleetd on it, waiting until it is ready. The token's
// label is prefix, the process id and the time, so that runs with -count
// above 1 (same process) do not collide with a token left by an earlier run.
func startFleetdProc(t *testing.T, dir, prefix string) *fleetdProc {
	t.Helper()
	token := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e9)
	bin := binaries(t)
	fp := &fleetdProc{bin: filepath.Join(bin, "fleetd"), data: filepath.Join(dir, "fleetd"),
		env:      []string{"KEYFLEET_HSM_PIN=crash-test-pin"},
		mqttAddr: fleettest.FreeAddr(t), adminAddr: fleettest.FreeAddr(t), opsAddr: fleettest.FreeAddr(t)}
	// Info level: the output is shown only when the test fails, and then
	// every state change and refusal is what one needs.
	fp.args = []string{"--data", fp.data, "--token", token, "--log-level", "info"}
	initCmd := exec.Command(fp.bin, append([]string{"init", "--create-token"}, fp.args...)...)
	initCmd.Env = append(os.Environ(), fp.env...)
	if out, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("fleetd init: %v\n%s", err, out)
	}
	tc, err := client.LoadCredential(datadir.Paths{Dir: fp.data}.AdminDir())
	if err != nil {
		t.Fatal(err)
	}
	fp.admin = client.New(fp.adminAddr, tc)
	fp.run(t)
	fp.ready(t)
	return fp
}

// run starts fleetd on the data directory and addresses, without waiting
// for it.
func (fp *fleetdProc) run(t *testing.T) {
	t.Helper()
	fp.proc = start(t, fp.env, fp.bin, append([]string{"run", "--mqtt-listen", fp.mqttAddr,
		"--admin-listen", fp.adminAddr, "--ops-listen", fp.opsAddr, "--grace", "1h"}, fp.args...)...)
}

// ready waits until fleetd's admin API answers and it reports ready.
func (fp *fleetdProc) ready(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	eventually(t, 20*time.Second, "fleetd up", func() bool { _, err := fp.admin.Status(ctx); return err == nil })
	eventually(t, 20*time.Second, "fleetd ready", func() bool { return httpStatus("http://"+fp.opsAddr+"/readyz") == 200 })
}

// kill SIGKILLs the running fleetd and waits until it is gone.
func (fp *fleetdProc) kill(t *testing.T) {
	t.Helper()
	if err := fp.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := fp.proc.wait(t, 10*time.Second); !killedBySIGKILL(err) {
		t.Fatalf("fleetd exit: got %v, want killed by SIGKILL", err)
	}
}

// stop stops the running fleetd with SIGTERM and fails unless it exits
// cleanly: its store can then be opened by the test.
func (fp *fleetdProc) stop(t *testing.T) {
	t.Helper()
	_ = fp.proc.cmd.Process.Signal(syscall.SIGTERM)
	if err := fp.proc.wait(t, 20*time.Second); err != nil {
		t.Fatalf("fleetd did not stop cleanly: %v", err)
	}
}

// fleetd is SIGKILLed while twenty rotations are in flight (half the
// devices hold a certificate they have not confirmed, half have enrolled and
// not yet received one) and restarted: every rotation completes and no
// version is issued twice.
func TestFleetdKilledMidRotation(t *testing.T) {
	const n = 20
	dir := t.TempDir()
	fp := startFleetdProc(t, dir, "crash")
	c, ctx := fp.admin, context.Background()

	var dirs []string
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, "devices", fmt.Sprintf("dev-%02d", i))
		if _, err := provision.Device(ctx, c, filepath.Base(d), d, ""); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	gate := make(chan struct{})
	var held atomic.Int32
	trail := &eventTrail{}
	// Even devices stop after storing their certificate, odd ones after
	// enrolling, until the gate opens: every rotation is in flight when
	// fleetd dies.
	runAgents(t, dirs, func(o *device.Options) {
		step := "after-enroll"
		var idx int
		fmt.Sscanf(filepath.Base(o.Dir), "dev-%d", &idx)
		if idx%2 == 0 {
			step = "after-cert-stored"
		}
		var once sync.Once
		o.Failpoint = func(s string) {
			if s == step {
				once.Do(func() { held.Add(1); <-gate })
			}
		}
		o.OnEvent = trail.record
	})
	t.Cleanup(func() {
		if t.Failed() {
			trail.dump(t)
		}
	})
	eventually(t, 20*time.Second, "all agents connected", func() bool {
		s, err := c.Status(ctx)
		return err == nil && s.ConnectedClient >= n+1
	})
	if _, err := c.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every agent in mid-rotation", func() bool { return held.Load() == n })

	fp.kill(t)
	fp.run(t)
	close(gate)
	eventually(t, 60*time.Second, "all rotations complete after the restart", allAt(t, c, n, 2))

	// Stop fleetd cleanly and read its store: each version issued once.
	fp.stop(t)
	st, err := store.OpenBolt(datadir.Paths{Dir: fp.data}.Store(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := issuedOnce(t, st); got != n {
		t.Errorf("certificates issued: got %d, want %d (one per device)", got, n)
	}
	for _, d := range dirs {
		ks, err := device.OpenKeystore(d)
		if err != nil {
			t.Fatal(err)
		}
		if s := ks.State(); s.Active != 2 || s.Pending != 0 {
			t.Errorf("%s: keystore state %+v, want active 2", d, s)
		}
	}
}

// A real fleet-agent process is SIGKILLed at each step of a rotation and
// started again: it comes back with a credential the broker accepts and
// completes the rotation.
func TestAgentKilledAtEachStep(t *testing.T) {
	bin := binaries(t)
	f := fleettest.StartFleet(t, func(c *server.Config) { c.Grace = time.Hour })
	ctx := context.Background()
	for _, step := range []string{"after-pending-key", "after-enroll", "after-cert-stored", "after-promote"} {
		t.Run(step, func(t *testing.T) {
			id := "crash-" + step
			dir := f.AddDevice(t, id)
			agent := filepath.Join(bin, "fleet-agent")
			a := start(t, nil, agent, "--dir", dir, "--crash-at", step, "--log-level", "debug")
			eventually(t, 10*time.Second, "agent connected", func() bool {
				d, err := f.Admin.Device(ctx, id)
				return err == nil && d.Reported == 1 && f.Broker().Connected() >= 2
			})
			if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{id}}); err != nil {
				t.Fatal(err)
			}
			if err := a.wait(t, 20*time.Second); !killedBySIGKILL(err) {
				t.Fatalf("agent exit: got %v, want killed by SIGKILL at %s", err, step)
			}
			start(t, nil, agent, "--dir", dir, "--log-level", "debug")
			eventually(t, 30*time.Second, "rotation complete after the restart", func() bool {
				return activeVersions(t, f.Admin)[id] == 2
			})
			ks, err := device.OpenKeystore(dir)
			if err != nil {
				t.Fatal(err)
			}
			if s := ks.State(); s.Active != 2 || s.Pending != 0 || s.Previous != 1 {
				t.Errorf("keystore state: got %+v, want active 2, previous 1", s)
			}
		})
	}
	if got := issuedOnce(t, f.Store()); got != 4 {
		t.Errorf("certificates issued: got %d, want 4", got)
	}
}

// eventTrail keeps the last agent events of each device, for the log of a
// failed test: what each device last did says where a rotation stopped.
type eventTrail struct {
	mu sync.Mutex
	by map[string][]string
}

func (e *eventTrail) record(ev device.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.by == nil {
		e.by = map[string][]string{}
	}
	l := append(e.by[ev.Device], fmt.Sprintf("%s %s v%d %s", ev.At.Format("15:04:05.000"), ev.Kind, ev.Version, ev.Detail))
	if len(l) > 6 {
		l = l[len(l)-6:]
	}
	e.by[ev.Device] = l
}

func (e *eventTrail) dump(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for dev, l := range e.by {
		t.Logf("last events of %s:\n  %s", dev, strings.Join(l, "\n  "))
	}
}
