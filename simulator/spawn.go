package simulator

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// spawned is a fleetd the simulator runs as a child process (--fleetd-bin),
// so that it can SIGKILL it, or restart it and with it the embedded broker,
// in the middle of a run.
type spawned struct {
	bin, data string
	env       []string
	args      []string
	client    *client.Client
	opsAddr   string // its ops listener (/metrics)
	mqtt      string // its broker, when it is one node of several

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	opsBase uint64 // HSM operations of earlier lifetimes
	opsLast uint64
	log     *os.File
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// spawnFleetd initialises a deployment in dir (SoftHSM2 token included) and
// starts fleetd from bin. SOFTHSM2_CONF must already point at dir's token
// directory (softhsm.Configure), which the child inherits.
func spawnFleetd(ctx context.Context, bin, dir string, extra []string) (*spawned, error) {
	s := &spawned{bin: bin, data: filepath.Join(dir, "fleetd"),
		env: append(os.Environ(), fmt.Sprintf("KEYFLEET_HSM_PIN=sim-%d", os.Getpid()))}
	token := fmt.Sprintf("fleetsim-%d", os.Getpid())
	init := exec.CommandContext(ctx, bin, "init", "--data", s.data, "--token", token, "--create-token", "--log-level", "warn")
	init.Env = s.env
	if out, err := init.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("simulator: fleetd init: %v\n%s", err, out)
	}
	mqtt, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adm, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if s.opsAddr, err = freeAddr(); err != nil {
		return nil, err
	}
	s.args = append([]string{"run", "--data", s.data, "--token", token, "--mqtt-listen", mqtt, "--admin-listen", adm, "--ops-listen", s.opsAddr, "--log-level", "warn"}, extra...)
	if s.log, err = os.Create(filepath.Join(dir, "fleetd.log")); err != nil {
		return nil, err
	}
	tc, err := client.LoadCredential(datadir.Paths{Dir: s.data}.AdminDir())
	if err != nil {
		return nil, err
	}
	s.client = client.New(adm, tc)
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *spawned) start(ctx context.Context) error {
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("simulator: start fleetd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.client.Status(ctx); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("simulator: fleetd exited at start; see %s", s.log.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("simulator: fleetd not serving after 30 s; see %s", s.log.Name())
		}
	}
}

// restart stops fleetd with sig (SIGKILL: a crash; SIGTERM: an orderly
// restart, which restarts the embedded broker too) and starts it again.
func (s *spawned) restart(ctx context.Context, sig syscall.Signal) error {
	return s.restartWith(ctx, sig, nil)
}

// restartWith is restart with between, if set, run while fleetd is down
// (campaign mode reads the killed fleetd's store there).
func (s *spawned) restartWith(ctx context.Context, sig syscall.Signal, between func()) error {
	s.ops(ctx) // bank the operations so far
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("simulator: signal fleetd: %w", err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	if between != nil {
		between()
	}
	return s.start(ctx)
}

// ops returns the HSM operations of every lifetime of fleetd so far.
func (s *spawned) ops(ctx context.Context) uint64 {
	st, err := s.client.Status(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		if st.HSMOps < s.opsLast { // a new lifetime
			s.opsBase += s.opsLast
		}
		s.opsLast = st.HSMOps
	}
	return s.opsBase + s.opsLast
}

func (s *spawned) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	if s.log != nil {
		s.log.Close()
	}
}
