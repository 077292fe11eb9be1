package simulator

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// Baseline is the raw HSM cost measured in the same run as the rotations,
// so that figures can be given as ratios on a shared, noisy machine.
type Baseline struct {
	// SignsPerSec: ECDSA P-256 signatures in a SoftHSM2 token through
	// crypto11, one goroutine per core: the key type and path fleetd's CA uses.
	SignsPerSec float64 `json:"hsm_signs_per_s"`
	// CertsPerSec: device certificates issued with the CA key in the token.
	CertsPerSec float64 `json:"hsm_certs_per_s"`
}

// measureBaseline runs each measurement for d on a token of its own.
func measureBaseline(ctx context.Context, d time.Duration) (*Baseline, error) {
	module, err := softhsm.Module()
	if err != nil {
		return nil, err
	}
	pin := hsm.PIN(fmt.Sprintf("base-%x", time.Now().UnixNano()))
	label := fmt.Sprintf("baseline-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if err := hsm.InitToken(module, label, pin, pin); err != nil {
		return nil, err
	}
	tok, err := hsm.Open(hsm.Config{Module: module, TokenLabel: label, PIN: pin})
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	key, err := tok.GenerateP256("baseline")
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte("keyfleet baseline"))
	signs, err := rate(ctx, d, func() error {
		_, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("simulator: baseline sign: %w", err)
	}
	root, err := certs.NewRoot(key, "baseline CA", time.Now(), 24*time.Hour)
	if err != nil {
		return nil, err
	}
	ca, err := certs.NewCA(root, key, certs.CAOptions{})
	if err != nil {
		return nil, err
	}
	leaf, err := device.NewKey()
	if err != nil {
		return nil, err
	}
	req := certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: "baseline-device"}, PublicKey: &leaf.PublicKey}
	issued, err := rate(ctx, d, func() error {
		_, err := ca.Issue(ctx, req)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("simulator: baseline issue: %w", err)
	}
	return &Baseline{SignsPerSec: signs, CertsPerSec: issued}, nil
}

// rate runs op on every core for d and returns operations per second.
func rate(ctx context.Context, d time.Duration, op func() error) (float64, error) {
	var n atomic.Uint64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(d)
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := op(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}
