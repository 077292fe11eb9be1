package pgstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// rotate runs one identity rotation of device id as the engine records it:
// four updates (request, issue, activate superseding the old version,
// retire it after grace), each with the audit records of its changes.
func rotate(ctx context.Context, s store.Store, id string, at time.Time) error {
	step := func(move func(m *lifecycle.Manager, st *store.SlotState) ([]lifecycle.Change, error)) error {
		_, err := s.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
			st := d.Slot(protocol.SlotIdentity)
			changes, err := move(lifecycle.Manage(st, id, protocol.SlotIdentity, "bench"), st)
			if err != nil {
				return nil, err
			}
			var evs []store.Event
			for _, c := range changes {
				evs = append(evs, store.Event{Action: c.To.String(), Device: id, Slot: uint8(protocol.SlotIdentity), Version: c.Version, Actor: "bench"})
			}
			return evs, nil
		})
		return err
	}
	var v, old uint32
	cred := lifecycle.Credential{Cert: make([]byte, 400), KeyID: make([]byte, 32), Serial: "0a", NotAfter: at.Add(90 * 24 * time.Hour)}
	return firstErr(
		step(func(m *lifecycle.Manager, st *store.SlotState) ([]lifecycle.Change, error) {
			old = st.Active().Version
			k, c, err := m.Request([]byte("rid"), at)
			if k != nil {
				v = k.Version
			}
			return c, err
		}),
		func() error {
			return step(func(m *lifecycle.Manager, _ *store.SlotState) ([]lifecycle.Change, error) {
				return m.Issue(v, cred, []byte("enroll"), at)
			})
		},
		func() error {
			return step(func(m *lifecycle.Manager, _ *store.SlotState) ([]lifecycle.Change, error) {
				return m.Activate(v, []byte("ack"), at, at.Add(time.Hour))
			})
		},
		func() error {
			return step(func(m *lifecycle.Manager, _ *store.SlotState) ([]lifecycle.Change, error) {
				return m.Retire(old, at.Add(time.Hour))
			})
		},
	)
}

// firstErr returns err, else runs the steps in order until one fails.
func firstErr(err error, steps ...func() error) error {
	for _, s := range steps {
		if err != nil {
			return err
		}
		err = s()
	}
	return err
}

// provisioned creates n devices with an active version 1.
func provisioned(t testing.TB, s store.Store, n int) []string {
	t.Helper()
	ids := make([]string, n)
	devs := make([]*store.Device, n)
	at := time.Now()
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%06d", i)
		d := &store.Device{ID: ids[i], CreatedAt: at}
		if _, err := lifecycle.Manage(d.Slot(protocol.SlotIdentity), ids[i], protocol.SlotIdentity, "bench").
			Provision(lifecycle.Credential{Cert: make([]byte, 400), Serial: "01"}, at); err != nil {
			t.Fatal(err)
		}
		devs[i] = d
	}
	if _, err := s.(store.BatchCreator).CreateDevices(context.Background(), devs, nil); err != nil {
		t.Fatal(err)
	}
	return ids
}

// maxStatementsPerUpdate bounds what one uncontended device update sends:
// read; BEGIN, compare-and-set UPDATE, lock the chain head, number the
// records, insert them and move the head, COMMIT; and, when the grace
// index changes, a DELETE and an INSERT.
const maxStatementsPerUpdate = 9

// TestStatementsPerRotation counts the statements an uncontended rotation
// sends to PostgreSQL, for sizing (docs/scale-out.md): it fails if an
// update needs more than maxStatementsPerUpdate.
func TestStatementsPerRotation(t *testing.T) {
	s, _ := open(t, Options{})
	ids := provisioned(t, s, 20)
	ctx := context.Background()
	before := s.Stats().Statements
	for _, id := range ids {
		if err := rotate(ctx, s, id, time.Now()); err != nil {
			t.Fatalf("rotate %s: %v", id, err)
		}
	}
	st := s.Stats()
	perRotation := float64(st.Statements-before) / float64(len(ids))
	t.Logf("%.1f statements per rotation, %.2f per device update (4 updates per rotation); %d CAS misses",
		perRotation, perRotation/4, st.CASMisses)
	if perRotation/4 > maxStatementsPerUpdate {
		t.Errorf("%.2f statements per device update, want at most %d", perRotation/4, maxStatementsPerUpdate)
	}
	if n, err := s.VerifyAudit(ctx); err != nil || n == 0 {
		t.Errorf("VerifyAudit after the rotations: %d, %v", n, err)
	}
}

// BenchmarkRotation rotates devices one after another through the store
// and reports PostgreSQL statements per rotation and per device update.
func BenchmarkRotation(b *testing.B) {
	dsn := pg.NewSchema(b)
	s, err := Open(context.Background(), dsn, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ids := provisioned(b, s, 100)
	ctx := context.Background()
	before := s.Stats().Statements
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := rotate(ctx, s, ids[i%len(ids)], time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(s.Stats().Statements-before) / float64(b.N)
	b.ReportMetric(n, "stmts/rotation")
	b.ReportMetric(n/4, "stmts/update")
}
