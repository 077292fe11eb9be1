package pgstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestCrashKeepsAcknowledgedWrites: PostgreSQL and all its backends are
// killed (SIGKILL) while writers update devices. After crash recovery every
// update that UpdateDevice acknowledged is there, each device holds exactly
// as many audit records as increments (the record and its events commit
// together or not at all), and every chain verifies.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	const devices, writers = 4, 8
	// The binary's server: tests run one at a time, and the next finds it
	// restarted.
	srv := pg
	ctx := context.Background()
	dsn := srv.NewSchema(t)
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range devices {
		if err := s.CreateDevice(ctx, &store.Device{ID: fmt.Sprintf("d%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var acked [devices]atomic.Int64
	var wrote atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; ; r++ {
				i := (w + r) % devices
				id := fmt.Sprintf("d%d", i)
				_, err := s.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
					d.Slot(protocol.SlotIdentity).Desired++
					return []store.Event{{Action: "inc", Device: id}}, nil
				})
				if err != nil {
					return // the server is gone
				}
				acked[i].Add(1)
				wrote.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(20 * time.Second); wrote.Load() < 50; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d updates in 20 s before the crash", wrote.Load())
		}
	}
	srv.Kill()
	wg.Wait()
	s.Close()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	defer s.Close()
	perDevice := map[string]uint32{}
	if err := s.ForEachAudit(ctx, 0, func(r *store.AuditRecord) error { perDevice[r.Device]++; return nil }); err != nil {
		t.Fatal(err)
	}
	var total int64
	for i := range devices {
		id := fmt.Sprintf("d%d", i)
		d, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		got, ack := d.Slot(protocol.SlotIdentity).Desired, acked[i].Load()
		// At most one update per writer was in flight: committed, perhaps,
		// but not acknowledged.
		if int64(got) < ack || int64(got) > ack+writers {
			t.Errorf("%s: %d increments after the crash, %d acknowledged before it", id, got, ack)
		}
		if perDevice[id] != got {
			t.Errorf("%s: %d audit records for %d increments", id, perDevice[id], got)
		}
		total += int64(got)
	}
	n, err := s.VerifyAudit(ctx)
	if err != nil || int64(n) != total {
		t.Errorf("VerifyAudit after the crash: %d, %v; want %d, nil", n, err, total)
	}
	t.Logf("%d updates acknowledged before the crash, %d found after it", wrote.Load(), total)
}
