package simulator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/provision"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// startInProcess makes a SoftHSM2 token under dir, initialises and starts
// fleetd in this process with its data under dir/fleetd, and returns it
// with an operator client. mod adjusts fleetd's config before init;
// clientTime, if set, is the clock the client checks fleetd's certificate
// with (a simulated clock, when fleetd runs on one).
func startInProcess(ctx context.Context, dir string, log *slog.Logger, mod func(*server.Config),
	clientTime func() time.Time) (*server.Server, *client.Client, error) {
	if _, err := softhsm.Configure(filepath.Join(dir, "softhsm")); err != nil {
		return nil, nil, err
	}
	module, err := softhsm.Module()
	if err != nil {
		return nil, nil, err
	}
	pin := hsm.PIN(fmt.Sprintf("sim-%x", time.Now().UnixNano()))
	label := fmt.Sprintf("fleetsim-%d-%x", os.Getpid(), time.Now().UnixNano()&0xffff)
	if err := hsm.InitToken(module, label, pin, pin); err != nil {
		return nil, nil, err
	}
	cfg := server.Config{
		DataDir: filepath.Join(dir, "fleetd"), HSM: hsm.Config{Module: module, TokenLabel: label, PIN: pin},
		MQTTAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: log,
	}
	if mod != nil {
		mod(&cfg)
	}
	if err := server.Init(ctx, cfg); err != nil {
		return nil, nil, err
	}
	srv, err := server.Start(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	tc, err := client.LoadCredential(datadir.Paths{Dir: cfg.DataDir}.AdminDir())
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	if clientTime != nil {
		tc.Time = clientTime
	}
	return srv, client.New(srv.AdminAddr(), tc), nil
}

// provisionAll provisions every id through the admin API into dirOf(id),
// parallel at a time, calling done after each; it returns the first error.
func provisionAll(ctx context.Context, c *client.Client, ids []string, dirOf func(string) string, parallel int, done func()) error {
	sem := make(chan struct{}, parallel)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := provision.Device(ctx, c, id, dirOf(id), ""); err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			if done != nil {
				done()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("simulator: provision: %w", err)
	default:
		return nil
	}
}
