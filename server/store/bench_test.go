package store_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

func benchStore(b *testing.B, devices int) *store.Bolt {
	b.Helper()
	s, err := store.OpenBolt(b.TempDir()+"/bench.db", store.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	for i := 0; i < devices; i++ {
		d := &store.Device{ID: fmt.Sprintf("d%06d", i)}
		if _, err := lifecycle.Manage(d.Slot(protocol.SlotIdentity), d.ID, protocol.SlotIdentity, "bench").
			Provision(lifecycle.Credential{Cert: make([]byte, 450)}, time.Time{}); err != nil {
			b.Fatal(err)
		}
		if err := s.CreateDevice(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func bump(d *store.Device) ([]store.Event, error) {
	d.Slot(protocol.SlotIdentity).Desired++
	return []store.Event{{Action: "bench", Device: d.ID}}, nil
}

// BenchmarkUpdateDeviceSerial is one durable state change at a time: each
// pays a whole fsync.
func BenchmarkUpdateDeviceSerial(b *testing.B) {
	s := benchStore(b, 1)
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.UpdateDevice(context.Background(), "d000000", bump); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateDeviceParallel is the engine's pattern: many workers
// changing different devices, sharing group commits.
func BenchmarkUpdateDeviceParallel(b *testing.B) {
	const devices = 256
	s := benchStore(b, devices)
	var n atomic.Uint64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("d%06d", n.Add(1)%devices)
			if _, err := s.UpdateDevice(context.Background(), id, bump); err != nil {
				b.Fatal(err)
			}
		}
	})
}
