package main

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// against returns a fleetctl that talks to f with its operator credential:
// it runs the command line args and gives stdout, stderr and the exit
// status, as a shell would see them.
func against(f *fleettest.Fleet) func(args ...string) (string, string, int) {
	cred := datadir.Paths{Dir: f.Config.DataDir}.AdminDir()
	return func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		status := run(append([]string{"--admin", f.AdminAddr(), "--credential", cred}, args...), &out, &errOut)
		return out.String(), errOut.String(), status
	}
}

// startAgents runs a real agent for each keystore directory until the
// test ends.
func startAgents(t *testing.T, dirs ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, dir := range dirs {
		a, err := device.New(device.Options{Dir: dir, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
}
