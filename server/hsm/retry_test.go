package hsm_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// signN signs n digests with s and checks each signature, returning the
// first failure.
func signN(s crypto.Signer, n int) error {
	pub := s.Public().(*ecdsa.PublicKey)
	for i := range n {
		d := sha256.Sum256([]byte(fmt.Sprintf("message %d", i)))
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			return fmt.Errorf("signature %d: %w", i, err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			return fmt.Errorf("signature %d does not verify", i)
		}
	}
	return nil
}

// TestSignerReopensSessions: when the token no longer knows the sessions
// the signer's pool holds (here every session of the process is closed
// under it, as a token restart or a network HSM fail-over does), the next
// signature re-opens them, logs in again and succeeds: the caller sees no
// error.
func TestSignerReopensSessions(t *testing.T) {
	tok, cfg := openToken(t)
	s, err := tok.GenerateP256("k")
	if err != nil {
		t.Fatal(err)
	}
	if err := signN(s, 1); err != nil {
		t.Fatal(err)
	}
	raw := openRaw(t, cfg)
	if err := raw.p.CloseAllSessions(raw.slot); err != nil {
		t.Fatalf("C_CloseAllSessions: %v", err)
	}
	raw.s = 0
	if err := signN(s, 3); err != nil {
		t.Fatalf("after the sessions were closed: %v", err)
	}
	if tok.Retries() == 0 {
		t.Error("no retry counted: the closed sessions were not noticed")
	}
	again, err := tok.Signer("k") // the token stays usable for new look-ups
	if err != nil {
		t.Fatal(err)
	}
	if err := signN(again, 1); err != nil {
		t.Fatal(err)
	}
}

// childEnv names the token a re-executed test binary signs with, as
// module|label|SOFTHSM2_CONF.
const childEnv = "KEYFLEET_HSM_SIGN_CHILD"

// TestTwoProcessesSign: two processes (this test binary and a copy of it)
// open one SoftHSM2 token, as several fleetd nodes do, and sign 500 times
// each at the same time with the key made once by the first: no error
// reaches either. SoftHSM2 keeps its state per process, so only a second
// process shares the token the way nodes do.
func TestTwoProcessesSign(t *testing.T) {
	const n = 500
	if v := os.Getenv(childEnv); v != "" {
		parts := strings.SplitN(v, "|", 3)
		t.Setenv("SOFTHSM2_CONF", parts[2]) // the parent's token directory
		tok, err := hsm.Open(hsm.Config{Module: parts[0], TokenLabel: parts[1], PIN: fleettest.PIN})
		if err != nil {
			t.Fatal(err)
		}
		defer tok.Close()
		s, err := tok.Signer("shared")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("hsm-child-ready")
		if err := signN(s, n); err != nil {
			t.Fatalf("child: %v", err)
		}
		fmt.Printf("hsm-child-signed %d retries %d\n", n, tok.Retries())
		return
	}
	tok, cfg := openToken(t)
	s, err := tok.GenerateP256("shared")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hung child fails the test
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTwoProcessesSign$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+cfg.Module+"|"+cfg.TokenLabel+"|"+os.Getenv("SOFTHSM2_CONF"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	var log []string
	ready := false
	for !ready && lines.Scan() {
		log = append(log, lines.Text())
		ready = lines.Text() == "hsm-child-ready"
	}
	if !ready {
		cmd.Wait()
		t.Fatalf("the child process never got ready:\n%s", strings.Join(log, "\n"))
	}
	var wg sync.WaitGroup
	var mine error
	var took time.Duration
	wg.Add(1)
	go func() { defer wg.Done(); t0 := time.Now(); mine = signN(s, n); took = time.Since(t0) }()
	for lines.Scan() {
		log = append(log, lines.Text())
	}
	werr := cmd.Wait()
	wg.Wait()
	if mine != nil {
		t.Errorf("this process: %v", mine)
	}
	signed := false
	for _, l := range log {
		signed = signed || strings.HasPrefix(l, fmt.Sprintf("hsm-child-signed %d ", n))
	}
	if werr != nil || !signed {
		t.Errorf("the child process: %v\n%s", werr, strings.Join(log, "\n"))
	}
	t.Logf("2 processes x %d signatures: %v with the child's start, %v for this process's; retries here %d; child: %q",
		n, time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond), tok.Retries(), log[len(log)-min(len(log), 3):])
}
