// Package swtpm runs a software TPM 2.0 (Debian's swtpm) with a token of
// tpm2-pkcs11 on it, for the tests of device keys held in a TPM: the same
// PKCS#11 module a board with a real TPM loads, talking to swtpm instead of
// /dev/tpmrm0. Tools come from scripts/deps.sh --with-tpm.
package swtpm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyfleet/keyfleet/server/hsm"
)

// ModulePaths are where Debian installs tpm2-pkcs11 (libtpm2-pkcs11-1).
var ModulePaths = []string{
	"/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1",
	"/usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1",
	"/usr/lib/arm-linux-gnueabihf/libtpm2_pkcs11.so.1",
	"/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
}

// ErrNotInstalled names what is missing and how to get it.
var ErrNotInstalled = errors.New("swtpm: swtpm or libtpm2_pkcs11.so.1 not found; run scripts/deps.sh --with-tpm (apt-get install swtpm libtpm2-pkcs11-1)")

// TPM is a running swtpm and the tpm2-pkcs11 store beside it.
type TPM struct {
	// Module is the tpm2-pkcs11 library.
	Module string
	// Env points tpm2-pkcs11 at this TPM and store: give it to every
	// process (or set it in this one) that loads Module.
	Env []string
	cmd *exec.Cmd
}

// Start runs swtpm on two consecutive free loopback ports with its state under dir and
// prepares a tpm2-pkcs11 store there. Stop it with Stop.
func Start(dir string) (*TPM, error) {
	mod := ""
	for _, p := range ModulePaths {
		if _, err := os.Stat(p); err == nil {
			mod = p
			break
		}
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil || mod == "" {
		return nil, ErrNotInstalled
	}
	state, store := filepath.Join(dir, "tpm"), filepath.Join(dir, "tpm2-pkcs11")
	for _, d := range []string{state, store} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("swtpm: %w", err)
		}
	}
	server, ctrl, err := freePorts()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(server),
		"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(ctrl),
		"--tpmstate", "dir="+state, "--flags", "not-need-init,startup-clear")
	log, err := os.Create(filepath.Join(dir, "swtpm.log"))
	if err != nil {
		return nil, fmt.Errorf("swtpm: %w", err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("swtpm: start: %w", err)
	}
	t := &TPM{Module: mod, cmd: cmd, Env: []string{
		"TPM2_PKCS11_TCTI=swtpm:host=127.0.0.1,port=" + strconv.Itoa(server),
		"TPM2_PKCS11_STORE=" + store,
		"TPM2_PKCS11_LOG_LEVEL=0",
	}}
	addr := "127.0.0.1:" + strconv.Itoa(server)
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return t, nil
		}
		if time.Now().After(deadline) {
			t.Stop()
			return nil, fmt.Errorf("swtpm: not listening on %s after 5 s (see %s)", addr, log.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetEnv sets Env in this process, before it loads Module.
func (t *TPM) SetEnv() error {
	for _, kv := range t.Env {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return fmt.Errorf("swtpm: %w", err)
		}
	}
	return nil
}

// InitToken creates a token labelled label through PKCS#11 itself
// (C_InitToken and C_InitPIN, which tpm2-pkcs11 supports): no tpm2_ptool.
// SetEnv must have been called.
func (t *TPM) InitToken(label string, soPIN, userPIN string) error {
	return hsm.InitToken(t.Module, label, hsm.PIN(soPIN), hsm.PIN(userPIN))
}

// Stop ends swtpm.
func (t *TPM) Stop() {
	_ = t.cmd.Process.Kill()
	_ = t.cmd.Wait()
}

// freePorts returns two consecutive free loopback ports: the TCTI finds
// swtpm's control channel at the port after its server's.
func freePorts() (int, int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, fmt.Errorf("swtpm: free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, p + 1, nil
		}
	}
	return 0, 0, errors.New("swtpm: no two consecutive free ports")
}
