package cluster_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/cluster"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// published records what a node's link was given, in order.
type published struct {
	mu   sync.Mutex
	msgs map[string][]string // topic -> payloads
	n    int
}

func (p *published) Publish(_ context.Context, topic string, b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.msgs == nil {
		p.msgs = map[string][]string{}
	}
	p.msgs[topic] = append(p.msgs[topic], string(b))
	p.n++
	return nil
}

func (p *published) PublishRetained(ctx context.Context, topic string, b []byte) error {
	return p.Publish(ctx, topic, b)
}

func (p *published) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// A bulk rotation's downlinks to devices held by another node cost one
// sessions read and a few transactions, not a read and a transaction each:
// the statements node a sends for N devices (two downlinks each, one after
// the other, all devices at once) stay near one INSERT per downlink, and b
// publishes every downlink of a device in the order it was sent.
func TestDownlinksBatched(t *testing.T) {
	const devices = 64
	dsn := pg.NewSchema(t)
	ctx := context.Background()
	stA, stB := openStore(t, dsn), openStore(t, dsn)
	quiet := cluster.Options{LeaseTTL: time.Minute, Poll: time.Hour, PolicyEvery: time.Hour, Logger: fleettest.Logger(t)}
	ob := quiet
	ob.NodeID = "b"
	b, err := cluster.Open(ctx, stB, ob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var onB, onA published
	b.Publisher(&onB)
	var held []store.Session
	for i := range devices {
		held = append(held, store.Session{Device: fmt.Sprintf("dev-%d", i), Node: "b", Since: time.Now()})
	}
	if err := stB.PutSessions(ctx, "b", held, nil); err != nil {
		t.Fatal(err)
	}
	oa := quiet
	oa.NodeID = "a"
	a, err := cluster.Open(ctx, stA, oa)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	pub := a.Publisher(&onA)

	before := stA.Stats().Statements
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for i := range devices {
		wg.Go(func() {
			topic := fmt.Sprintf("kf/d/dev-%d/down", i)
			for k := range 2 {
				if err := pub.Publish(ctx, topic, fmt.Appendf(nil, "%d-%d", i, k)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	stmts := stA.Stats().Statements - before
	t.Logf("%d downlinks to another node: %d statements, %v", 2*devices, stmts, took)
	// One INSERT per downlink, one sessions read, and BEGIN, NOTIFY and
	// COMMIT per transaction: unbatched it was five statements a downlink.
	if limit := uint64(2*devices + 1 + 3*12); stmts > limit {
		t.Errorf("%d downlinks cost %d statements, want at most %d", 2*devices, stmts, limit)
	}
	deadline := time.Now().Add(5 * time.Second)
	for onB.count() < 2*devices && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	onB.mu.Lock()
	defer onB.mu.Unlock()
	if onB.n != 2*devices {
		t.Fatalf("b published %d downlinks, want %d", onB.n, 2*devices)
	}
	for i := range devices {
		topic := fmt.Sprintf("kf/d/dev-%d/down", i)
		if got, want := fmt.Sprint(onB.msgs[topic]), fmt.Sprintf("[%d-0 %d-1]", i, i); got != want {
			t.Errorf("b published %s on %s, want %s", got, topic, want)
		}
	}
	if n := onA.count(); n != 0 {
		t.Errorf("a published %d downlinks of devices held by b itself", n)
	}
}

// sessionsHeld is a node's broker as far as the cluster asks it: which
// devices it holds; it drops none.
type sessionsHeld struct {
	mu   sync.Mutex
	held map[string]bool
}

func (s *sessionsHeld) Present(device string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[device]
}

func (s *sessionsHeld) ConnectedSince(device string) (time.Time, bool) {
	return time.Time{}, s.Present(device)
}

func (s *sessionsHeld) set(device string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held[device] = on
}

func (*sessionsHeld) Disconnect(string) int                   { return 0 }
func (*sessionsHeld) DisconnectCredential(string, string) int { return 0 }

// A downlink routed by a stale session snapshot (the device moved from b
// to c less than a second ago) reaches the device anyway: b, which no
// longer holds it, mails it on to c.
func TestStaleHolderMailsOn(t *testing.T) {
	dsn := pg.NewSchema(t)
	ctx := context.Background()
	quiet := cluster.Options{LeaseTTL: time.Minute, Poll: time.Hour, PolicyEvery: time.Hour, Logger: fleettest.Logger(t)}
	open := func(id string) (*cluster.Node, *pgstore.Store) {
		st := openStore(t, dsn)
		o := quiet
		o.NodeID = id
		n, err := cluster.Open(ctx, st, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n, st
	}
	b, stB := open("b")
	c, stC := open("c")
	a, _ := open("a")
	var onA, onB, onC published
	brokerB := &sessionsHeld{held: map[string]bool{"dev-x": true}}
	b.Closer(brokerB)
	b.Publisher(&onB)
	c.Publisher(&onC)
	pub := a.Publisher(&onA)
	at := time.Now()
	if err := stB.PutSessions(ctx, "b", []store.Session{{Device: "dev-x", Node: "b", Since: at}}, nil); err != nil {
		t.Fatal(err)
	}
	const topic = "kf/d/dev-x/down"
	if err := pub.Publish(ctx, topic, []byte("first")); err != nil { // a's snapshot: dev-x on b
		t.Fatal(err)
	}
	waitFor(t, "b publishing the first downlink", func() bool { return onB.count() == 1 })
	brokerB.set("dev-x", false)
	if err := stB.PutSessions(ctx, "b", nil, []store.Session{{Device: "dev-x", Node: "b", Since: at}}); err != nil {
		t.Fatal(err)
	}
	if err := stC.PutSessions(ctx, "c", []store.Session{{Device: "dev-x", Node: "c", Since: time.Now()}}, nil); err != nil {
		t.Fatal(err)
	}
	bBefore := stB.Stats().Statements
	if err := pub.Publish(ctx, topic, []byte("second")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c publishing the second downlink", func() bool { return onC.count() == 1 })
	// b read its mail, where dev-x is, and mailed it on: not a's fresh
	// lookup sending straight to c.
	if n := stB.Stats().Statements - bBefore; n < 3 {
		t.Errorf("b ran %d statements after the move; the downlink did not go through b", n)
	}
	onB.mu.Lock()
	onC.mu.Lock()
	defer onB.mu.Unlock()
	defer onC.mu.Unlock()
	if got := fmt.Sprint(onB.msgs[topic]); got != "[first]" {
		t.Errorf("b published %s, want [first]", got)
	}
	if got := fmt.Sprint(onC.msgs[topic]); got != "[second]" {
		t.Errorf("c published %s, want [second]", got)
	}
	if n := onA.count(); n != 0 {
		t.Errorf("a published %d downlinks of a device held elsewhere", n)
	}
}

// waitFor polls ok for up to 5 s.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
