package e2e

import (
	"context"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/store"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(floodEnv); spec != "" {
		os.Exit(flooderMain(spec)) // the flood test's flooder process
	}
	code := fleettest.Main(m)
	shared.stop()
	os.Exit(code)
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clock is an injectable clock whose offset a test moves forward.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// runAgents starts an agent per keystore directory and stops them at the
// end of the test.
func runAgents(t *testing.T, dirs []string, mod func(*device.Options)) []*device.Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var agents []*device.Agent
	for _, d := range dirs {
		o := device.Options{Dir: d, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second}
		if mod != nil {
			mod(&o)
		}
		a, err := device.New(o)
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return agents
}

// activeVersions returns each device's active version as fleetd records it.
func activeVersions(t *testing.T, c *client.Client) map[string]uint32 {
	t.Helper()
	ds, err := c.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, d := range ds {
		out[d.ID] = d.Active
	}
	return out
}

func allAt(t *testing.T, c *client.Client, n int, v uint32) func() bool {
	return func() bool {
		ds, err := c.Devices(context.Background())
		if err != nil || len(ds) != n {
			return false // fleetd may be restarting
		}
		for _, d := range ds {
			if d.Active != v {
				return false
			}
		}
		return true
	}
}

// issuedOnce checks in the audit log that no (device, version) was issued
// twice, that the chain verifies, and returns how many issuances it saw.
func issuedOnce(t *testing.T, st store.Store) int {
	t.Helper()
	ctx := context.Background()
	if _, err := st.VerifyAudit(ctx); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	seen := map[string]int{}
	n := 0
	if err := st.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error {
		if r.Action == "issued" {
			key := fmt.Sprintf("%s/%d", r.Device, r.Version)
			seen[key]++
			if seen[key] > 1 {
				t.Errorf("device %s version %d issued %d times", r.Device, r.Version, seen[key])
			}
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

type urlURL = url.URL

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func csrPEM(t *testing.T, name string) []byte {
	t.Helper()
	key, err := device.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := device.CSR(name, key)
	if err != nil {
		// A name the CSR cannot carry: send something CSR-shaped anyway.
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x00}})
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// runAgentsStoppable starts agents and returns a function that stops them.
func runAgentsStoppable(t *testing.T, dirs []string) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, d := range dirs {
		a, err := device.New(device.Options{Dir: d, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop
}
