package simulator

import (
	"context"
	"crypto/ecdsa"
	"encoding/pem"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/protocol"
)

// The fleet model (--fleet N --max-connected M): the real IoT pattern of
// many devices and few connections at a time. Devices sleep as a few hundred
// bytes of keystore in memory (device.MemStorage), not as live agents; at
// most M are awake at once. Each wakes, connects, converges (its rotation
// runs to activation), disconnects and sleeps again. The run ends when every
// device of the fleet has rotated.

// wakeTimeout bounds one device's time awake.
const wakeTimeout = 2 * time.Minute

type sleeper struct {
	id  string
	st  *device.MemStorage
	tok uint32 // version it must reach
}

func runFleet(ctx context.Context, cfg Config, client *client.Client, hsmOps func(context.Context) uint64, rep *Report) error {
	n := cfg.Fleet
	run := protocol.NewID()[:2]
	sl := make([]sleeper, n)
	for i := range sl {
		sl[i].id = fmt.Sprintf("f%x-%07d", run, i)
		sl[i].st = device.NewMemStorage()
	}
	fl := newFleet(cfg)

	// Register the fleet in batches: keys and CSRs made on every core,
	// certificates issued and devices stored by fleetd a thousand at a time.
	t0 := time.Now()
	if err := registerFleet(ctx, fl, client, sl); err != nil {
		return err
	}
	rep.ProvisionS = time.Since(t0).Seconds()
	var size int
	for i := range sl {
		size += sl[i].st.Size()
	}
	rep.SleepingBytesPerDevice = float64(size) / float64(n)

	ops0 := hsmOps(ctx)
	start := time.Now()
	// Ask for every device's rotation: desired state only; none is awake.
	bar := fl.bar(n, "requesting")
	for i := 0; i < n; i += rotateChunk {
		ids := make([]string, 0, rotateChunk)
		for j := i; j < min(i+rotateChunk, n); j++ {
			ids = append(ids, sl[j].id)
		}
		resp, err := client.Rotate(ctx, adminapi.RotateRequest{Devices: ids})
		if err != nil {
			return fmt.Errorf("simulator: request rotations: %w", err)
		}
		for k, r := range resp.Rotations {
			sl[i+k].tok = r.Version
		}
		bar.Add(len(ids))
	}

	var (
		mu       sync.Mutex
		lat      []time.Duration
		failed   []string
		up, down atomic.Uint64
		done     atomic.Int64
	)
	bar.Finish()
	bar = fl.bar(n, fmt.Sprintf("fleet (%d awake at most)", cfg.MaxConnected))
	sem := make(chan struct{}, cfg.MaxConnected)
	var wg sync.WaitGroup
	for i := range sl {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func(s *sleeper) {
			defer func() { <-sem; wg.Done() }()
			took, u, d, err := wake(ctx, cfg, s)
			up.Add(u)
			down.Add(d)
			mu.Lock()
			if err != nil {
				failed = append(failed, s.id)
			} else {
				lat = append(lat, took)
			}
			mu.Unlock()
			done.Add(1)
			bar.Add(1)
		}(&sl[i])
	}
	wg.Wait()
	bar.Finish()
	dur := time.Since(start)

	rep.Devices = n
	rep.Rounds = 1
	rep.RotationsCompleted = len(lat)
	rep.RotationsFailed = len(failed)
	rep.NotConverged = failed
	if len(failed) > 0 {
		rep.FailuresByReason["not activated while awake"] = len(failed)
	}
	rep.DurationS = dur.Seconds()
	rep.RotationsPerSec = float64(len(lat)) / dur.Seconds()
	rep.BytesUp, rep.BytesDown = up.Load(), down.Load()
	rep.HSMOps = hsmOps(ctx) - ops0
	if len(lat) > 0 {
		c := float64(len(lat))
		rep.BytesPerRotation = float64(rep.BytesUp+rep.BytesDown) / c
		rep.BytesUpPerRotation = float64(rep.BytesUp) / c
		rep.BytesDownPerRotation = float64(rep.BytesDown) / c
		rep.HSMOpsPerRotation = float64(rep.HSMOps) / c
	}
	rep.fillLatency(lat)
	rep.FleetSize, rep.MaxConnected = n, cfg.MaxConnected
	rep.SimulatorRSSBytes = procstat.RSS()
	if st, err := client.Status(ctx); err == nil {
		rep.FleetdRSSBytes, rep.FleetdGoroutines = st.RSSBytes, st.Goroutines
	}
	return nil
}

// wake runs one device until it has activated its new version.
func wake(ctx context.Context, cfg Config, s *sleeper) (took time.Duration, up, down uint64, err error) {
	dctx, cancel := context.WithTimeout(ctx, wakeTimeout)
	defer cancel()
	var rotAt time.Time
	doneCh := make(chan time.Duration, 1)
	a, err := device.New(device.Options{Storage: s.st, Logger: cfg.Logger,
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: 5 * time.Second,
		OnEvent: func(e device.Event) {
			switch e.Kind {
			case device.EventRotate:
				rotAt = e.At
			case device.EventActivated:
				if e.Version >= s.tok {
					select {
					case doneCh <- e.At.Sub(rotAt):
					default:
					}
				}
			}
		}})
	if err != nil {
		return 0, 0, 0, err
	}
	runDone := make(chan struct{})
	go func() { _ = a.Run(dctx); close(runDone) }()
	select {
	case took = <-doneCh:
	case <-dctx.Done():
		err = fmt.Errorf("device %s did not activate v%d in %v", s.id, s.tok, wakeTimeout)
	}
	cancel()
	<-runDone
	up, down = a.Bytes()
	return took, up, down, err
}

// registerFleet makes keys and CSRs on every core and registers the devices
// a batch at a time; two batches are in flight so fleetd's issuing and the
// simulator's key making overlap.
func registerFleet(ctx context.Context, fl *fleet, client *client.Client, sl []sleeper) error {
	bar := fl.bar(len(sl), "registering")
	defer bar.Finish()
	type batch struct {
		lo, hi int
		keys   []*ecdsa.PrivateKey
		req    adminapi.BatchProvisionRequest
	}
	batches := make(chan *batch, 2)
	errc := make(chan error, 1)
	go func() {
		defer close(batches)
		for lo := 0; lo < len(sl); lo += adminapi.MaxBatch {
			b := &batch{lo: lo, hi: min(lo+adminapi.MaxBatch, len(sl))}
			b.keys = make([]*ecdsa.PrivateKey, b.hi-b.lo)
			b.req.Devices = make([]adminapi.BatchDevice, b.hi-b.lo)
			var wg sync.WaitGroup
			var firstErr atomic.Value
			per := (b.hi - b.lo + runtime.NumCPU() - 1) / runtime.NumCPU()
			for w := b.lo; w < b.hi; w += per {
				wg.Add(1)
				go func(from, to int) {
					defer wg.Done()
					for i := from; i < to; i++ {
						k, err := device.NewKey()
						if err == nil {
							var csr []byte
							if csr, err = device.CSR(sl[i].id, k); err == nil {
								b.keys[i-b.lo] = k
								b.req.Devices[i-b.lo] = adminapi.BatchDevice{ID: sl[i].id, CSR: csr}
								continue
							}
						}
						firstErr.CompareAndSwap(nil, err)
						return
					}
				}(w, min(w+per, b.hi))
			}
			wg.Wait()
			if err, ok := firstErr.Load().(error); ok {
				errc <- err
				return
			}
			select {
			case batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	var shared struct{ ca, upd []byte }
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	var regErr atomic.Value
	for b := range batches {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			resp, err := client.ProvisionBatch(ctx, b.req)
			if err != nil {
				regErr.CompareAndSwap(nil, err)
				return
			}
			// Every device shares one copy of the trust material.
			ca, upd := []byte(resp.CA), []byte(resp.UpdateKey)
			fl.agentsMu.Lock()
			if shared.ca == nil {
				shared.ca, shared.upd = ca, upd
			}
			ca, upd = shared.ca, shared.upd
			fl.agentsMu.Unlock()
			for k, r := range resp.Results {
				i := b.lo + k
				if r.Error != "" {
					regErr.CompareAndSwap(nil, fmt.Errorf("register %s: %s", r.ID, r.Error))
					return
				}
				certPEM := pemCert(r.Cert)
				if err := device.InstallBundle(sl[i].st, device.Bundle{Identity: device.Identity{ID: sl[i].id, Broker: resp.Broker},
					Key: b.keys[k], CertPEM: certPEM, CAPEM: ca, UpdatePEM: upd, Anchors: resp.Anchors}); err != nil {
					regErr.CompareAndSwap(nil, err)
					return
				}
			}
			bar.Add(b.hi - b.lo)
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("simulator: make keys: %w", err)
	default:
	}
	if err, ok := regErr.Load().(error); ok {
		return fmt.Errorf("simulator: register fleet: %w", err)
	}
	return nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
