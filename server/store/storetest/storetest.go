// Package storetest is the conformance suite of store.Store: every backend
// runs Run from its own tests and must pass all of it.
//
// # Basics
//
//	func TestBolt(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { ... open an empty store ... })
//	}
//
// The suite checks the contract written on store.Store and store.ErrNoChange:
// copies in, copies out; ErrExists and ErrNotExist; UpdateDevice atomic,
// lossless under concurrency and writing nothing when fn refuses; devices
// listed in id order; audit records numbered 1..n, each linked to the
// previous record of its chain (store.AuditRecord.Chain) and verifiable;
// cancelled contexts writing nothing.
//
// # Caveats
//
// newStore must return a fresh, empty store for every call and arrange for
// it to be closed (t.Cleanup); the suite never closes it, so that the
// backend's own cleanup can check the files it leaves behind. Subtests do not
// run in parallel with each other, but several subtests start goroutines.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGetRoundTrip", testCreateGet},
		{"ReturnedCopiesAreCopies", testCopies},
		{"CreateTwiceExists", testCreateTwice},
		{"GetUnknownNotExist", testGetUnknown},
		{"UpdateAppliesAndPersists", testUpdatePersists},
		{"UpdateUnknownNotExist", testUpdateUnknown},
		{"UpdateFnErrors", testUpdateFnErrors},
		{"UpdateConcurrentNoLostUpdate", testUpdateConcurrent},
		{"ForEachDeviceIDOrder", testForEachDevice},
		{"AuditNumberedAndChained", testAuditChain},
		{"AuditVerifyWhileAppending", testAuditVerifyConcurrent},
		{"ForEachAuditFrom", testForEachAuditFrom},
		{"CancelledContextWritesNothing", testCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
	if _, ok := newStore(t).(store.PolicyStore); ok { // policies are an optional capability
		for _, tc := range policyCases {
			t.Run(tc.name, func(t *testing.T) {
				s := newStore(t)
				tc.fn(t, s.(store.PolicyStore), s)
			})
		}
	}
	if _, ok := newStore(t).(store.CampaignStore); !ok {
		return // campaigns are an optional capability
	}
	for _, tc := range campaignCases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tc.fn(t, s.(store.CampaignStore), s)
		})
	}
}

// epoch is a fixed, sub-second instant: backends must keep nanoseconds
// (grace deadlines are compared to the nanosecond).
var epoch = time.Date(2031, 3, 14, 15, 9, 26, 535897932, time.UTC)

// sampleDevice returns a device with every field set, so that a backend
// that drops one fails the round trip: version 1 retired, 2 superseded, 3
// issued, reached through the life cycle's moves.
func sampleDevice(id string) *store.Device {
	d := &store.Device{ID: id, CreatedAt: epoch, LastSeen: epoch.Add(time.Hour)}
	st := d.Slot(protocol.SlotIdentity)
	cred := func(n byte, validity time.Duration) lifecycle.Credential {
		return lifecycle.Credential{Cert: []byte{0x30, n}, KeyID: []byte(fmt.Sprintf("kid-%d", n)), Serial: fmt.Sprintf("%02x", n),
			NotAfter: epoch.Add(validity)}
	}
	m := lifecycle.Manage(st, id, protocol.SlotIdentity, "storetest")
	must(m.Provision(cred(1, 90*24*time.Hour), epoch))
	must(request(m, "rid-2", epoch.Add(time.Minute)))
	must(m.Issue(2, cred(2, 91*24*time.Hour), []byte("enroll-2"), epoch.Add(2*time.Minute)))
	must(m.Activate(2, []byte("act-2"), epoch.Add(3*time.Minute), epoch.Add(24*time.Hour)))
	must(m.Retire(1, epoch.Add(48*time.Hour)))
	must(m.Supersede(2, epoch.Add(7*24*time.Hour+time.Nanosecond)))
	must(request(m, "rid-3", epoch.Add(4*time.Minute)))
	must(m.Issue(3, cred(3, 92*24*time.Hour), []byte("enroll-3"), epoch.Add(5*time.Minute)))
	st.Reported = 2
	return d
}

// request opens a rotation with rotation id rid.
func request(m *lifecycle.Manager, rid string, at time.Time) ([]lifecycle.Change, error) {
	_, c, err := m.Request([]byte(rid), at)
	return c, err
}

// must stops a test whose own set-up is wrong.
func must(_ []lifecycle.Change, err error) {
	if err != nil {
		panic("storetest: " + err.Error())
	}
}

// normalize returns a copy of d in a canonical form: times in UTC, empty
// byte slices and collections nil. Backends may differ in those and still be
// correct.
func normalize(d *store.Device) *store.Device {
	if d == nil {
		return nil
	}
	b := func(p []byte) []byte {
		if len(p) == 0 {
			return nil
		}
		return slices.Clone(p)
	}
	tm := func(t time.Time) time.Time { return t.UTC() }
	c := *d
	c.CreatedAt, c.LastSeen = tm(d.CreatedAt), tm(d.LastSeen)
	c.Labels = nil
	if len(d.Labels) > 0 {
		c.Labels = maps.Clone(d.Labels)
	}
	c.Slots = nil
	for s, st := range d.Slots {
		if c.Slots == nil {
			c.Slots = map[protocol.Slot]*store.SlotState{}
		}
		cs := &store.SlotState{Desired: st.Desired, Reported: st.Reported}
		for _, k := range st.Versions {
			ck := *k
			ck.RID, ck.Cert, ck.KeyID = b(k.RID), b(k.Cert), b(k.KeyID)
			ck.EnrollID, ck.ActivatedID = b(k.EnrollID), b(k.ActivatedID)
			ck.NotAfter, ck.GraceUntil = tm(k.NotAfter), tm(k.GraceUntil)
			ck.RequestedAt, ck.IssuedAt = tm(k.RequestedAt), tm(k.IssuedAt)
			ck.ActivatedAt, ck.RetiredAt = tm(k.ActivatedAt), tm(k.RetiredAt)
			cs.Versions = append(cs.Versions, &ck)
		}
		c.Slots[s] = cs
	}
	return &c
}

func show(d *store.Device) string {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Sprintf("%+v", d)
	}
	return string(b)
}

// checkEqual fails t unless got and want hold the same device.
func checkEqual(t *testing.T, what string, got, want *store.Device) {
	t.Helper()
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		t.Errorf("%s: got %s, want %s", what, show(got), show(want))
	}
}

func mustCreate(t *testing.T, s store.Store, d *store.Device, events ...store.Event) {
	t.Helper()
	if err := s.CreateDevice(context.Background(), d, events...); err != nil {
		t.Fatalf("CreateDevice(%q): got error %v, want nil", d.ID, err)
	}
}

func mustGet(t *testing.T, s store.Store, id string) *store.Device {
	t.Helper()
	d, err := s.GetDevice(context.Background(), id)
	if err != nil {
		t.Fatalf("GetDevice(%q): got error %v, want nil", id, err)
	}
	return d
}

// auditRecords returns every audit record, in the order ForEachAudit gives.
func auditRecords(t *testing.T, s store.Store, from uint64) []*store.AuditRecord {
	t.Helper()
	var out []*store.AuditRecord
	if err := s.ForEachAudit(context.Background(), from, func(r *store.AuditRecord) error {
		c := *r
		out = append(out, &c)
		return nil
	}); err != nil {
		t.Fatalf("ForEachAudit(%d): got error %v, want nil", from, err)
	}
	return out
}

func auditCount(t *testing.T, s store.Store) int {
	t.Helper()
	return len(auditRecords(t, s, 0))
}

func ev(action, device string) store.Event {
	return store.Event{Action: action, Device: device, Slot: 1, Version: 1, RID: []byte(action), Actor: "storetest", Detail: device + " " + action}
}

func testCreateGet(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name string
		dev  *store.Device
	}{
		{"full", sampleDevice("dev-full")},
		{"bare", &store.Device{ID: "dev-bare"}},
		{"labelled", func() *store.Device {
			d := sampleDevice("dev-labelled")
			d.Labels = map[string]string{"site": "berlin", "example.com/ring": "canary", "empty": ""}
			d.Model = "sensor-v2"
			return d
		}()},
		{"empty slot", func() *store.Device {
			d := &store.Device{ID: "dev-empty-slot", CreatedAt: epoch}
			d.Slot(protocol.SlotIdentity).Desired = 1
			return d
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := normalize(tc.dev)
			mustCreate(t, s, tc.dev, ev("create", tc.dev.ID))
			checkEqual(t, "GetDevice after CreateDevice", mustGet(t, s, tc.dev.ID), want)
		})
	}
}

func testCopies(t *testing.T, s store.Store) {
	ctx := context.Background()
	in := sampleDevice("dev-1")
	want := normalize(in)
	mustCreate(t, s, in)

	// Changing the value handed to CreateDevice changes nothing stored.
	in.Revoked = true
	in.Slot(protocol.SlotIdentity).Desired = 42
	in.Slot(protocol.SlotIdentity).Versions[0].Cert[0] = 0xff
	checkEqual(t, "after changing CreateDevice's argument", mustGet(t, s, "dev-1"), want)

	mutate := func(d *store.Device) {
		d.Revoked = true
		d.LastSeen = d.LastSeen.Add(time.Hour)
		st := d.Slot(protocol.SlotIdentity)
		st.Desired = 99
		st.Versions[1].Cert[1] = 0xff
		st.Versions[2].KeyID[0] = 'X'
		m := lifecycle.Manage(st, d.ID, protocol.SlotIdentity, "storetest")
		m.RevokeAll(epoch.Add(time.Hour))
		must(request(m, "rid-4", epoch.Add(time.Hour)))
		d.Slot(protocol.Slot(9)).Desired = 1
	}
	for _, tc := range []struct {
		name string
		get  func(t *testing.T) *store.Device
	}{
		{"GetDevice", func(t *testing.T) *store.Device { return mustGet(t, s, "dev-1") }},
		{"ForEachDevice", func(t *testing.T) *store.Device {
			var got *store.Device
			if err := s.ForEachDevice(ctx, func(d *store.Device) error { got = d; return nil }); err != nil {
				t.Fatalf("ForEachDevice: got error %v, want nil", err)
			}
			if got == nil {
				t.Fatal("ForEachDevice: got no device, want dev-1")
			}
			return got
		}},
		{"UpdateDevice result", func(t *testing.T) *store.Device {
			d, err := s.UpdateDevice(ctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
				d.LastSeen = want.LastSeen // a real write that leaves the record as it was
				return nil, nil
			})
			if err != nil {
				t.Fatalf("UpdateDevice: got error %v, want nil", err)
			}
			return d
		}},
		{"UpdateDevice ErrNoChange result", func(t *testing.T) *store.Device {
			d, err := s.UpdateDevice(ctx, "dev-1", func(*store.Device) ([]store.Event, error) { return nil, store.ErrNoChange })
			if err != nil {
				t.Fatalf("UpdateDevice: got error %v, want nil", err)
			}
			if d == nil {
				t.Fatal("UpdateDevice with ErrNoChange: got nil device, want the current record")
			}
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.get(t)
			checkEqual(t, tc.name, got, want)
			mutate(got)
			checkEqual(t, "GetDevice after mutating the "+tc.name+" copy", mustGet(t, s, "dev-1"), want)
		})
	}
}

func testCreateTwice(t *testing.T, s store.Store) {
	ctx := context.Background()
	first := sampleDevice("dev-1")
	want := normalize(first)
	mustCreate(t, s, first, ev("create", "dev-1"))
	n := auditCount(t, s)

	second := &store.Device{ID: "dev-1", Revoked: true}
	err := s.CreateDevice(ctx, second, ev("create-again", "dev-1"))
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second CreateDevice: got error %v, want %v", err, store.ErrExists)
	}
	checkEqual(t, "device after refused CreateDevice", mustGet(t, s, "dev-1"), want)
	if got := auditCount(t, s); got != n {
		t.Errorf("audit records after refused CreateDevice: got %d, want %d", got, n)
	}
}

func testGetUnknown(t *testing.T, s store.Store) {
	mustCreate(t, s, &store.Device{ID: "dev-1"})
	for _, id := range []string{"dev-2", "dev", "dev-10", "DEV-1", ""} {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			d, err := s.GetDevice(context.Background(), id)
			if !errors.Is(err, store.ErrNotExist) {
				t.Errorf("GetDevice(%q): got error %v, want %v", id, err, store.ErrNotExist)
			}
			if d != nil {
				t.Errorf("GetDevice(%q): got device %s, want nil", id, show(d))
			}
		})
	}
}

func testUpdatePersists(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustCreate(t, s, sampleDevice("dev-1"), ev("create", "dev-1"))
	want := normalize(sampleDevice("dev-1"))
	apply := func(d *store.Device) {
		m := lifecycle.Manage(d.Slot(protocol.SlotIdentity), d.ID, protocol.SlotIdentity, "storetest")
		must(m.Cancel(3, epoch.Add(time.Hour)))
		must(request(m, "rid-4", epoch.Add(time.Hour)))
		d.LastSeen = epoch.Add(2 * time.Hour)
	}
	apply(want)

	got, err := s.UpdateDevice(ctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
		apply(d)
		return []store.Event{ev("request", "dev-1"), ev("request-2", "dev-1")}, nil
	})
	if err != nil {
		t.Fatalf("UpdateDevice: got error %v, want nil", err)
	}
	checkEqual(t, "UpdateDevice result", got, want)
	checkEqual(t, "GetDevice after UpdateDevice", mustGet(t, s, "dev-1"), want)

	recs := auditRecords(t, s, 0)
	var actions []string
	for _, r := range recs {
		actions = append(actions, r.Action)
	}
	if wantA := []string{"create", "request", "request-2"}; !slices.Equal(actions, wantA) {
		t.Errorf("audit actions: got %q, want %q", actions, wantA)
	}
}

func testUpdateUnknown(t *testing.T, s store.Store) {
	called := false
	d, err := s.UpdateDevice(context.Background(), "nobody", func(*store.Device) ([]store.Event, error) {
		called = true
		return []store.Event{ev("x", "nobody")}, nil
	})
	if !errors.Is(err, store.ErrNotExist) {
		t.Errorf("UpdateDevice(unknown): got error %v, want %v", err, store.ErrNotExist)
	}
	if d != nil {
		t.Errorf("UpdateDevice(unknown): got device %s, want nil", show(d))
	}
	if called {
		t.Error("UpdateDevice(unknown): fn was called, want not called")
	}
	if _, err := s.GetDevice(context.Background(), "nobody"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("GetDevice after UpdateDevice(unknown): got error %v, want %v", err, store.ErrNotExist)
	}
	if got := auditCount(t, s); got != 0 {
		t.Errorf("audit records: got %d, want 0", got)
	}
}

var errRefused = errors.New("storetest: refused")

func testUpdateFnErrors(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustCreate(t, s, sampleDevice("dev-1"), ev("create", "dev-1"))
	want := normalize(sampleDevice("dev-1"))

	for _, tc := range []struct {
		name    string
		fnErr   error
		wantErr error // nil: UpdateDevice must return nil and the current record
	}{
		{"ErrNoChange", store.ErrNoChange, nil},
		{"wrapped ErrNoChange", fmt.Errorf("already there: %w", store.ErrNoChange), nil},
		{"other error", errRefused, errRefused},
		{"wrapped other error", fmt.Errorf("policy: %w", errRefused), errRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := auditCount(t, s)
			got, err := s.UpdateDevice(ctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
				// Change the record and ask for events, then refuse:
				// none of it may be written.
				d.Revoked = true
				d.Slot(protocol.SlotIdentity).Desired = 77
				return []store.Event{ev("should-not-be-written", "dev-1")}, tc.fnErr
			})
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("UpdateDevice: got error %v, want nil", err)
				}
				checkEqual(t, "UpdateDevice result", got, want)
			} else {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("UpdateDevice: got error %v, want %v", err, tc.wantErr)
				}
				if errors.Is(err, store.ErrNoChange) {
					t.Errorf("UpdateDevice: got error %v wrapping ErrNoChange, want only %v", err, tc.wantErr)
				}
			}
			checkEqual(t, "GetDevice after refused update", mustGet(t, s, "dev-1"), want)
			if got := auditCount(t, s); got != n {
				t.Errorf("audit records: got %d, want %d (unchanged)", got, n)
			}
		})
	}
}

func testUpdateConcurrent(t *testing.T, s store.Store) {
	const devices, goroutines, rounds = 10, 50, 4
	ctx := context.Background()
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%02d", i)
		mustCreate(t, s, &store.Device{ID: ids[i]})
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*rounds)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				id := ids[(g+r)%devices]
				_, err := s.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
					d.Slot(protocol.SlotIdentity).Desired++
					return []store.Event{{Action: "inc", Device: id}}, nil
				})
				if err != nil {
					errs <- fmt.Errorf("goroutine %d round %d: UpdateDevice(%q): %w", g, r, id, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, id := range ids {
		d := mustGet(t, s, id)
		want := uint32(goroutines * rounds / devices)
		if got := d.Slot(protocol.SlotIdentity).Desired; got != want {
			t.Errorf("%s: Desired got %d, want %d (lost updates)", id, got, want)
		}
	}
	n, err := s.VerifyAudit(ctx)
	if err != nil {
		t.Errorf("VerifyAudit: got error %v, want nil", err)
	}
	if want := uint64(goroutines * rounds); n != want {
		t.Errorf("VerifyAudit: got %d records, want %d", n, want)
	}
}

func testForEachDevice(t *testing.T, s store.Store) {
	ctx := context.Background()
	// Created out of order, with ids whose byte order differs from their
	// numeric order.
	in := []string{"dev-b", "dev-10", "dev-a", "dev-2", "DEV-z", "dev-1", "dev-a.1", "dev-a-1"}
	for _, id := range in {
		mustCreate(t, s, &store.Device{ID: id, CreatedAt: epoch})
	}
	want := slices.Sorted(slices.Values(in))

	var got []string
	if err := s.ForEachDevice(ctx, func(d *store.Device) error {
		got = append(got, d.ID)
		return nil
	}); err != nil {
		t.Fatalf("ForEachDevice: got error %v, want nil", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("ForEachDevice order: got %q, want %q", got, want)
	}

	t.Run("fn error stops", func(t *testing.T) {
		var seen int
		err := s.ForEachDevice(ctx, func(d *store.Device) error {
			seen++
			if seen == 3 {
				return errRefused
			}
			return nil
		})
		if !errors.Is(err, errRefused) {
			t.Errorf("ForEachDevice: got error %v, want %v", err, errRefused)
		}
		if seen != 3 {
			t.Errorf("ForEachDevice calls after an error: got %d, want 3", seen)
		}
	})
}

func testAuditChain(t *testing.T, s store.Store) {
	ctx := context.Background()
	if n, err := s.VerifyAudit(ctx); err != nil || n != 0 {
		t.Fatalf("VerifyAudit on empty store: got %d, %v, want 0, nil", n, err)
	}

	var want []store.Event
	mustCreate(t, s, &store.Device{ID: "dev-1"}, ev("create", "dev-1"), ev("issue", "dev-1"))
	want = append(want, ev("create", "dev-1"), ev("issue", "dev-1"))
	mustCreate(t, s, &store.Device{ID: "dev-0"}) // no events
	if err := s.Audit(ctx, ev("operator-login", ""), ev("export", "")); err != nil {
		t.Fatalf("Audit: got error %v, want nil", err)
	}
	want = append(want, ev("operator-login", ""), ev("export", ""))
	if err := s.Audit(ctx); err != nil { // nothing to append
		t.Fatalf("Audit(): got error %v, want nil", err)
	}
	if _, err := s.UpdateDevice(ctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
		d.Slot(protocol.SlotIdentity).Desired = 2
		return []store.Event{ev("request", "dev-1")}, nil
	}); err != nil {
		t.Fatalf("UpdateDevice: got error %v, want nil", err)
	}
	want = append(want, ev("request", "dev-1"))
	mustCreate(t, s, &store.Device{ID: "dev-2"}, ev("create", "dev-2"))
	want = append(want, ev("create", "dev-2"))

	recs := auditRecords(t, s, 0)
	if len(recs) != len(want) {
		t.Fatalf("audit records: got %d, want %d", len(recs), len(want))
	}
	prev := map[uint32][]byte{} // the last hash of each chain (one chain: bbolt)
	for i, r := range recs {
		if wantSeq := uint64(i + 1); r.Seq != wantSeq {
			t.Errorf("record %d: Seq got %d, want %d", i, r.Seq, wantSeq)
		}
		if !reflect.DeepEqual(r.Event, want[i]) {
			t.Errorf("record %d: Event got %+v, want %+v", r.Seq, r.Event, want[i])
		}
		if r.Time.IsZero() {
			t.Errorf("record %d: Time got zero, want a timestamp", r.Seq)
		}
		if len(r.Hash) == 0 {
			t.Errorf("record %d: Hash got empty, want a hash", r.Seq)
		}
		if string(r.Prev) != string(prev[r.Chain]) {
			t.Errorf("record %d: Prev got %x, want the hash %x of the previous record of chain %d", r.Seq, r.Prev, prev[r.Chain], r.Chain)
		}
		prev[r.Chain] = r.Hash
	}
	n, err := s.VerifyAudit(ctx)
	if err != nil {
		t.Errorf("VerifyAudit: got error %v, want nil", err)
	}
	if n != uint64(len(want)) {
		t.Errorf("VerifyAudit: got %d records, want %d", n, len(want))
	}
}

func testForEachAuditFrom(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 7
	for i := 1; i <= n; i++ {
		if err := s.Audit(ctx, store.Event{Action: fmt.Sprintf("a%d", i)}); err != nil {
			t.Fatalf("Audit %d: got error %v, want nil", i, err)
		}
	}
	for _, tc := range []struct {
		from      uint64
		wantFirst uint64 // 0: no records
		wantCount int
	}{
		{0, 1, n},
		{1, 1, n},
		{2, 2, n - 1},
		{5, 5, n - 4},
		{n, n, 1},
		{n + 1, 0, 0},
		{1 << 40, 0, 0},
	} {
		t.Run(fmt.Sprintf("from %d", tc.from), func(t *testing.T) {
			recs := auditRecords(t, s, tc.from)
			if len(recs) != tc.wantCount {
				t.Fatalf("records: got %d, want %d", len(recs), tc.wantCount)
			}
			for i, r := range recs {
				if want := tc.wantFirst + uint64(i); r.Seq != want {
					t.Errorf("record %d: Seq got %d, want %d", i, r.Seq, want)
				}
				if want := fmt.Sprintf("a%d", r.Seq); r.Action != want {
					t.Errorf("record %d: Action got %q, want %q", r.Seq, r.Action, want)
				}
			}
		})
	}
	t.Run("fn error stops", func(t *testing.T) {
		calls := 0
		err := s.ForEachAudit(ctx, 2, func(*store.AuditRecord) error {
			calls++
			return errRefused
		})
		if !errors.Is(err, errRefused) {
			t.Errorf("ForEachAudit: got error %v, want %v", err, errRefused)
		}
		if calls != 1 {
			t.Errorf("ForEachAudit calls: got %d, want 1", calls)
		}
	})
}

func testCancelled(t *testing.T, s store.Store) {
	mustCreate(t, s, sampleDevice("dev-1"), ev("create", "dev-1"))
	want := normalize(sampleDevice("dev-1"))
	n := auditCount(t, s)

	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name  string
		write func() error
	}{
		{"CreateDevice", func() error {
			return s.CreateDevice(cctx, &store.Device{ID: "dev-2"}, ev("create", "dev-2"))
		}},
		{"UpdateDevice", func() error {
			_, err := s.UpdateDevice(cctx, "dev-1", func(d *store.Device) ([]store.Event, error) {
				d.Revoked = true
				return []store.Event{ev("revoke", "dev-1")}, nil
			})
			return err
		}},
		{"Audit", func() error { return s.Audit(cctx, ev("cancelled", "")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.write(); err == nil {
				t.Errorf("%s with cancelled context: got nil error, want an error", tc.name)
			}
			if _, err := s.GetDevice(context.Background(), "dev-2"); !errors.Is(err, store.ErrNotExist) {
				t.Errorf("GetDevice(dev-2): got error %v, want %v", err, store.ErrNotExist)
			}
			checkEqual(t, "dev-1", mustGet(t, s, "dev-1"), want)
			if got := auditCount(t, s); got != n {
				t.Errorf("audit records: got %d, want %d (unchanged)", got, n)
			}
		})
	}
}

// testAuditVerifyConcurrent: an operator verifies the chain while fleetd
// keeps appending; verification sees a consistent snapshot and never
// reports a sound chain as broken.
func testAuditVerifyConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			if err := s.Audit(ctx, store.Event{Action: "note", Actor: "test", Detail: fmt.Sprint(i)}); err != nil {
				errc <- err
				return
			}
		}
	}()
	verified := 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if _, err := s.VerifyAudit(ctx); err != nil {
			t.Fatalf("verify while appending (after %d good verifications): %v", verified, err)
		}
		verified++
	}
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	if n, err := s.VerifyAudit(ctx); err != nil || n < 200 {
		t.Fatalf("after the appends: %d records, %v", n, err)
	}
}
